/* hostmem.c — the frame pool. */
#include <stdlib.h>
#include <string.h>
#include "hostmem.h"

int hostmem_init(struct hostmem *h, u64 base_pfn, u32 limit)
{
	memset(h, 0, sizeof(*h));
	h->base_pfn = base_pfn;
	h->limit = limit;
	return 0;
}

void hostmem_destroy(struct hostmem *h)
{
	for (u32 i = 0; i < h->nchunks; i++)
		free(h->chunks[i]);
	free(h->chunks);
	free(h->frames);
	free(h->free_stack);
	free(h->rcu);
	free(h->noted);
	free(h->noted_list);
	memset(h, 0, sizeof(*h));
}


static int grow(struct hostmem *h)
{
	u32 ncap = h->cap ? h->cap * 2 : 1024;
	struct frame *nf;
	u32 *ns;

	if (ncap > 0x7fffffffu)
		return -1;
	nf = realloc(h->frames, (size_t)ncap * sizeof(*nf));
	if (!nf)
		return -1;
	h->frames = nf;
	ns = realloc(h->free_stack, (size_t)ncap * sizeof(*ns));
	if (!ns)
		return -1;
	h->free_stack = ns;
	memset(h->frames + h->cap, 0, (size_t)(ncap - h->cap) * sizeof(*nf));
	h->cap = ncap;
	return 0;
}

u32 hostmem_alloc(struct hostmem *h, int state)
{
	u32 f;

	if (h->limit && h->in_use >= h->limit)
		return NO_FRAME;
	if (h->nfree) {
		f = h->free_stack[--h->nfree]; /* LIFO: the last freed frame first */
	} else {
		if (h->nframes == h->cap && grow(h))
			return NO_FRAME;
		f = h->nframes++;
	}
	struct frame *fr = &h->frames[f];
	fr->state = (u8)state;
	fr->sp_level = 0;
	fr->sp_unlinked = 0;
	fr->sp_nx = 0;
	fr->sp_root = 0;
	fr->parent = NO_FRAME;
	fr->sp_gfn = 0;
	fr->owner_gfn = 0;
	h->in_use++;
	hostmem_note(h, f, HOSTMEM_NOTE_META);
	return f;
}

u64 *hostmem_table(struct hostmem *h, u32 f)
{
	hostmem_note(h, f, HOSTMEM_NOTE_WRITE);
	return hostmem_table_read(h, f);
}

u64 *hostmem_table_read(struct hostmem *h, u32 f)
{
	u32 c = f / ARENA_CHUNK_FRAMES;

	if (c >= h->nchunks) {
		u32 n = c + 1;
		u64 **nc = realloc(h->chunks, (size_t)n * sizeof(*nc));
		if (!nc)
			return NULL;
		memset(nc + h->nchunks, 0, (size_t)(n - h->nchunks) * sizeof(*nc));
		h->chunks = nc;
		h->nchunks = n;
	}
	if (!h->chunks[c]) {
		/* calloc of 2 MiB comes from mmap: untouched frames cost no RSS. */
		h->chunks[c] = calloc((size_t)ARENA_CHUNK_FRAMES * 512, sizeof(u64));
		if (!h->chunks[c])
			return NULL;
	}
	return h->chunks[c] + (size_t)(f % ARENA_CHUNK_FRAMES) * 512;
}

void hostmem_free_now(struct hostmem *h, u32 f)
{
	struct frame *fr = &h->frames[f];

	fr->gen++;
	fr->state = FRAME_FREE;
	h->free_stack[h->nfree++] = f;
	h->in_use--;
	h->frames_freed++;
	hostmem_note(h, f, HOSTMEM_NOTE_META);
}

void hostmem_free_rcu(struct hostmem *h, u32 f)
{
	if (h->nrcu == h->rcu_cap) {
		u32 ncap = h->rcu_cap ? h->rcu_cap * 2 : 256;
		u32 *n = realloc(h->rcu, (size_t)ncap * sizeof(*n));
		if (!n) {
			/* No memory for the callback list: wait for a grace period
			 * now (synchronize_rcu), as kfree_rcu does under pressure. */
			hostmem_synchronize_rcu(h);
			hostmem_free_now(h, f);
			return;
		}
		h->rcu = n;
		h->rcu_cap = ncap;
	}
	h->frames[f].state = FRAME_RCU;
	h->rcu[h->nrcu++] = f;
	hostmem_note(h, f, HOSTMEM_NOTE_META);
}

void hostmem_synchronize_rcu(struct hostmem *h)
{
	/* Callbacks run in the order they were queued, so the frame freed last is
	 * on top of the LIFO stack. */
	for (u32 i = 0; i < h->nrcu; i++)
		hostmem_free_now(h, h->rcu[i]);
	if (h->nrcu)
		h->grace_periods++;
	h->nrcu = 0;
}

void hostmem_note_slow(struct hostmem *h, u32 f, unsigned what)
{
	if (f >= h->nframes || h->noted_lost)
		return;
	if (f >= h->noted_size) {
		u32 n = h->cap;
		u8 *nb = realloc(h->noted, n);
		if (!nb) {
			h->noted_lost = true;
			return;
		}
		memset(nb + h->noted_size, 0, n - h->noted_size);
		h->noted = nb;
		h->noted_size = n;
	}
	if ((h->noted[f] & what) == what)
		return;
	if (!h->noted[f]) {
		if (h->nnoted == h->noted_cap) {
			u32 ncap = h->noted_cap ? h->noted_cap * 2 : 256;
			u32 *nl = realloc(h->noted_list, (size_t)ncap * sizeof(*nl));
			if (!nl) {
				h->noted_lost = true;
				return;
			}
			h->noted_list = nl;
			h->noted_cap = ncap;
		}
		h->noted_list[h->nnoted++] = f;
	}
	h->noted[f] |= (u8)what;
}

void hostmem_note_ptr(struct hostmem *h, const u64 *p)
{
	if (!h->track)
		return;
	uintptr_t a = (uintptr_t)p;
	for (u32 c = 0; c < h->nchunks; c++) {
		uintptr_t b = (uintptr_t)h->chunks[c];
		if (b && a >= b && a - b < (uintptr_t)ARENA_CHUNK_FRAMES * 4096) {
			hostmem_note_slow(h, c * ARENA_CHUNK_FRAMES + (u32)((a - b) / 4096), HOSTMEM_NOTE_WRITE);
			return;
		}
	}
}
