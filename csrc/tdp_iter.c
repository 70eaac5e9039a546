/* tdp_iter.c — see tdp_iter.h. Step order (down, side, up) and the restart rule
 * mirror mmu/tdp_iter.c; bug B9 (stepping past the entry after a restart) is a
 * switch so the fuzzer can find it. */
#include "tdp_iter.h"

static inline u64 gfn_round_for_level(u64 gfn, int level)
{
	return gfn & ~(pages_per_level(level) - 1);
}

u32 spte_to_child_frame(const struct hostmem *h, u64 spte, int level)
{
	u32 f;

	if (!is_shadow_present_pte(spte) || is_last_spte(spte, level))
		return NO_FRAME;
	f = hostmem_frame_of(h, spte_to_pfn(spte));
	if (f == NO_FRAME || h->frames[f].state == FRAME_GUEST || h->frames[f].state == FRAME_FREE)
		return NO_FRAME;
	return f;
}

/* The table at pt_path[level] is still the one the walk entered (same generation);
 * otherwise the walk stops with stale_frame set. */
static bool table_live(struct tdp_iter *it, int level)
{
	u32 f = it->pt_path[level];

	if (it->h->frames[f].gen == it->pt_gen[level])
		return true;
	it->stale_frame = f;
	it->valid = false;
	return false;
}

static void refresh_sptep(struct tdp_iter *it)
{
	u64 *table = it->h->chunks[it->pt_path[it->level] / ARENA_CHUNK_FRAMES] +
		     (size_t)(it->pt_path[it->level] % ARENA_CHUNK_FRAMES) * 512;

	it->sptep = table + spte_index(it->gfn, it->level);
	it->old_spte = *it->sptep;
}

void tdp_iter_restart(struct tdp_iter *it)
{
	it->yielded = false;
	it->yielded_gfn = it->next_last_level_gfn;
	it->level = it->root_level;
	it->gfn = gfn_round_for_level(it->next_last_level_gfn, it->level);
	it->valid = true;
	if (table_live(it, it->level)) /* the caller's reference keeps the root alive */
		refresh_sptep(it);
}

void tdp_iter_start(struct tdp_iter *it, struct hostmem *h, u32 root_frame, int root_level,
		    int min_level, u64 start_gfn)
{
	it->h = h;
	it->next_last_level_gfn = start_gfn;
	it->root_level = root_level;
	it->min_level = min_level;
	it->pt_path[root_level] = root_frame;
	it->pt_gen[root_level] = h->frames[root_frame].gen;
	it->stale_frame = NO_FRAME;
	tdp_iter_restart(it);
}

static bool try_step_down(struct tdp_iter *it)
{
	u32 child;

	if (it->level == it->min_level)
		return false;
	/* Re-read: the SPTE may have changed since the snapshot (e.g. zapped). */
	it->old_spte = *it->sptep;
	child = spte_to_child_frame(it->h, it->old_spte, it->level);
	if (child == NO_FRAME)
		return false;
	it->level--;
	it->pt_path[it->level] = child;
	it->pt_gen[it->level] = it->h->frames[child].gen;
	it->gfn = gfn_round_for_level(it->next_last_level_gfn, it->level);
	refresh_sptep(it);
	return true;
}

static bool try_step_side(struct tdp_iter *it)
{
	if (spte_index(it->gfn, it->level) == 511)
		return false;
	it->gfn += pages_per_level(it->level);
	it->next_last_level_gfn = it->gfn;
	it->sptep++;
	it->old_spte = *it->sptep;
	return true;
}

static bool try_step_up(struct tdp_iter *it)
{
	if (it->level == it->root_level || !table_live(it, it->level + 1))
		return false;
	it->level++;
	it->gfn = gfn_round_for_level(it->gfn, it->level);
	refresh_sptep(it);
	return true;
}

static void step(struct tdp_iter *it)
{
	if (!table_live(it, it->level))
		return;
	if (try_step_down(it))
		return;
	do {
		if (try_step_side(it))
			return;
	} while (try_step_up(it));
	it->valid = false;
}

void tdp_iter_next(struct tdp_iter *it)
{
	if (it->yielded && it->no_restart) {
		it->yielded = false; /* the injected bug: a stale handle, caught by step() */
	} else if (it->yielded) {
		tdp_iter_restart(it);
		/* B9 (fixed by 3a0f64de479c): the caller's `continue` stepped once
		 * more after the restart, skipping the entry at the restart point. */
		if (it->skip_after_restart) {
			/* Model: the skipped entry is the last-level SPTE at the
			 * restart gfn, so descend to it and step past it. */
			while (try_step_down(it))
				;
			step(it);
		}
		return;
	}
	step(it);
}
