/* tlb.c — see tlb.h. Replacement: LRU (stamps), tree-PLRU for power-of-two ways
 * (bit-PLRU otherwise), or seeded random [MODEL CHOICE: no vendor documents the
 * replacement policy of its TLBs]. */
#include <stdlib.h>
#include <string.h>
#include "tlb.h"

static u64 xorshift(u64 *s)
{
	u64 x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static int array_init(struct tlb_array *a, const struct tdp_tlb_array_config *c)
{
	memset(a, 0, sizeof(*a));
	if (c->sets <= 0 || c->ways <= 0)
		return 0;
	a->sets = (u32)c->sets;
	a->ways = (u32)c->ways;
	a->e = calloc((size_t)a->sets * a->ways, sizeof(*a->e));
	a->key = calloc((size_t)a->sets * a->ways, sizeof(*a->key));
	a->stamp = calloc((size_t)a->sets * a->ways, sizeof(*a->stamp));
	a->full = calloc(a->sets, sizeof(*a->full));
	a->plru = calloc(a->sets, sizeof(u64));
	return (a->e && a->key && a->stamp && a->full && a->plru) ? 0 : -1;
}

static void array_free(struct tlb_array *a)
{
	free(a->e);
	free(a->key);
	free(a->stamp);
	free(a->full);
	free(a->plru);
	memset(a, 0, sizeof(*a));
}

static int store_init(struct tlb_store *s, u64 cap)
{
	s->e = calloc(cap, sizeof(*s->e));
	s->key = calloc(cap, sizeof(*s->key));
	s->cap = cap;
	s->used = 0;
	if (s->e && s->key)
		return 0;
	free(s->e);
	free(s->key);
	s->e = NULL;
	s->key = NULL;
	return -1;
}

int tlb_init(struct tlb *t, const struct tdp_tlb_config *c, u64 seed)
{
	memset(t, 0, sizeof(*t));
	t->mode = c->mode;
	t->repl = c->repl;
	t->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
	t->kills = 1; /* full[] starts at 0: no set is known to be full */
	if (t->mode == TDP_TLB_ADVERSARIAL) {
		if (store_init(&t->store, 1024) || store_init(&t->pstore, 256))
			return -1;
		return 0;
	}
	for (int i = 0; i < 3; i++)
		if (array_init(&t->l1[i], &c->l1[i]))
			return -1;
	if (array_init(&t->l2, &c->l2) || array_init(&t->l2_1g, &c->l2_1g))
		return -1;
	for (int l = 2; l <= 5; l++)
		if (array_init(&t->psc[l], &c->psc[l]))
			return -1;
	return 0;
}

void tlb_destroy(struct tlb *t)
{
	for (int i = 0; i < 3; i++)
		array_free(&t->l1[i]);
	array_free(&t->l2);
	array_free(&t->l2_1g);
	for (int l = 0; l < 6; l++)
		array_free(&t->psc[l]);
	free(t->store.e);
	free(t->store.key);
	free(t->store.ix);
	free(t->pstore.e);
	free(t->pstore.key);
	free(t->pstore.ix);
	free(t->ctx);
	memset(t, 0, sizeof(*t));
}

int tlb_ctx_find(const struct tlb *t, u64 key)
{
	for (u32 i = 0; i < t->nctx; i++)
		if (t->ctx[i].key == key)
			return (int)i;
	return -1;
}

int tlb_ctx(struct tlb *t, u64 key)
{
	int i = tlb_ctx_find(t, key);

	if (i >= 0)
		return i;
	if (t->nctx == t->ctx_cap) {
		u32 ncap = t->ctx_cap ? t->ctx_cap * 2 : 16;
		struct tlb_ctx *n = realloc(t->ctx, ncap * sizeof(*n));
		if (!n)
			return -1;
		t->ctx = n;
		t->ctx_cap = ncap;
	}
	t->ctx[t->nctx] = (struct tlb_ctx){.key = key, .epoch = 1};
	return (int)t->nctx++;
}

/* Entries may have died: no set is known to be full any more. */
static void entries_may_die(struct tlb *t)
{
	if (++t->kills)
		return;
	/* Wrapped: forget every set's record, so that none matches a reused value. */
	struct tlb_array *arrs[] = {&t->l1[0], &t->l1[1], &t->l1[2], &t->l2, &t->l2_1g,
				    &t->psc[2], &t->psc[3], &t->psc[4], &t->psc[5]};
	for (size_t i = 0; i < sizeof(arrs) / sizeof(arrs[0]); i++)
		if (arrs[i]->sets)
			memset(arrs[i]->full, 0, arrs[i]->sets * sizeof(*arrs[i]->full));
	t->kills = 1;
}

void tlb_flush_ctx(struct tlb *t, int ctx)
{
	if (ctx >= 0 && (u32)ctx < t->nctx) {
		if (!++t->ctx[ctx].epoch)
			t->epoch_wrapped = true;
		entries_may_die(t);
	}
}

void tlb_flush_all(struct tlb *t)
{
	for (u32 i = 0; i < t->nctx; i++)
		if (!++t->ctx[i].epoch)
			t->epoch_wrapped = true;
	entries_may_die(t);
}

/* ---- set-associative arrays ---- */

/* tree-PLRU for power-of-two ways, bit-PLRU (MRU bits) otherwise; tlb_touch() calls
 * this for PLRU arrays of 2..64 ways. */
void tlb_plru_touch(struct tlb_array *a, u32 set, u32 way)
{
	u64 *b = &a->plru[set];
	if ((a->ways & (a->ways - 1)) == 0) {
		/* tree-PLRU: walk from the root, pointing every node away from `way`. */
		u32 node = 1, lo = 0, hi = a->ways;
		while (hi - lo > 1) {
			u32 mid = (lo + hi) / 2;
			if (way < mid) {
				*b |= 1ull << node; /* 1: victim on the right */
				node = node * 2;
				hi = mid;
			} else {
				*b &= ~(1ull << node);
				node = node * 2 + 1;
				lo = mid;
			}
		}
	} else {
		/* bit-PLRU (MRU bits) for other associativities. */
		*b |= 1ull << way;
		u64 full = (a->ways == 64) ? ~0ull : ((1ull << a->ways) - 1);
		if ((*b & full) == full)
			*b = 1ull << way;
	}
}

static u32 victim(struct tlb *t, struct tlb_array *a, u32 set)
{
	struct tlb_ent *row = &a->e[(size_t)set * a->ways];
	u32 w;

	/* The first dead way, if any: not searched again while the set is known full
	 * (every way alive when last searched, nothing died since, fills only replace). */
	if (a->full[set] != t->kills) {
		for (w = 0; w < a->ways; w++)
			if (!tlb_alive(t, &row[w]))
				return w;
		a->full[set] = t->kills;
	}
	switch (t->repl) {
	case TDP_REPL_RANDOM:
		return (u32)(xorshift(&t->rng) % a->ways);
	case TDP_REPL_PLRU:
		if (a->ways <= 64 && a->ways > 1) {
			u64 b = a->plru[set];
			if ((a->ways & (a->ways - 1)) == 0) {
				u32 node = 1, lo = 0, hi = a->ways;
				while (hi - lo > 1) {
					u32 mid = (lo + hi) / 2;
					if (b & (1ull << node)) {
						node = node * 2 + 1;
						lo = mid;
					} else {
						node = node * 2;
						hi = mid;
					}
				}
				return lo;
			}
			for (w = 0; w < a->ways; w++)
				if (!(b & (1ull << w)))
					return w;
		}
		/* fall through */
	default: {
		/* The oldest stamp, the first of equals (wrap-safe compare). */
		const u32 *st = &a->stamp[(size_t)set * a->ways];
		u32 best = 0, oldest = st[0];
		for (w = 1; w < a->ways; w++)
			if ((int32_t)(st[w] - oldest) < 0) {
				best = w;
				oldest = st[w];
			}
		return best;
	}
	}
}

/* absent: the caller has just probed this array for (ctx, vpn, level) and missed,
 * so the probe array_fill() starts with would miss too and is skipped. */
static struct tlb_ent *array_fill_probed(struct tlb *t, struct tlb_array *a, int ctx, u64 vpn, int level,
					 bool absent)
{
	u32 set, way;
	struct tlb_ent *e;

	if (!a->sets)
		return NULL;
	e = absent ? NULL : tlb_array_find(t, a, ctx, vpn, level, &set, &way);
	if (!e) {
		set = tlb_set_of(a, vpn);
		way = victim(t, a, set);
		e = &a->e[(size_t)set * a->ways + way];
	}
	a->key[(size_t)set * a->ways + way] = tlb_ent_key(vpn, level);
	e->vpn = vpn;
	e->level = (u8)level;
	e->ctx = (u32)ctx;
	e->epoch = t->ctx[ctx].epoch;
	if (!e->epoch)
		entries_may_die(t); /* the context's epoch wrapped: born dead */
	e->chk = 0; /* a new translation: the checker has not seen it */
	e->chk_gen = 0;
	a->fills++;
	tlb_touch(t, a, set, way);
	return e;
}

static struct tlb_ent *array_fill(struct tlb *t, struct tlb_array *a, int ctx, u64 vpn, int level)
{
	return array_fill_probed(t, a, ctx, vpn, level, false);
}

/* ---- adversarial store ---- */

static inline u64 store_hash(u64 vpn, int level)
{
	u64 h = (vpn * 0x9e3779b97f4a7c15ull) ^ ((u64)level << 58);
	return h ^ (h >> 29);
}

/* ---- the store's index ----
 * Every live entry of the store is the last one filled for its (tag, ctx): a fill
 * reuses a live entry of theirs, so at most one of theirs lives, and a dead entry
 * stays dead (its epoch is behind its context's, or 0) until a context's epoch
 * wraps. So store_find() reads the slot the index names instead of walking the
 * probe chain, with the same answer; the slots, and so the dump's order, are
 * untouched. Only live entries are indexed when it is rebuilt. */

static inline u64 ix_hash(u64 key, u32 ctx)
{
	/* splitmix64's finalizer: the tags of one gfn's levels differ in few bits */
	u64 h = key + ctx * 0x9e3779b97f4a7c15ull;
	h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
	h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
	return h ^ (h >> 31);
}

static struct tlb_store_ref *ix_find(const struct tlb_store *s, u64 key, u32 ctx)
{
	if (!s->ix_cap)
		return NULL;
	for (u64 j = ix_hash(key, ctx) & (s->ix_cap - 1);; j = (j + 1) & (s->ix_cap - 1)) {
		struct tlb_store_ref *r = &s->ix[j];
		if (!r->key || (r->key == key && r->ctx == ctx))
			return r;
	}
}

/* Index the live entries anew, with room for several times as many (each
 * rebuild reads the whole store). */
static void ix_rebuild(struct tlb *t, struct tlb_store *s)
{
	u64 live = 0, ncap = 256;

	for (u64 i = 0; i < s->cap; i++)
		live += s->key[i] && tlb_alive(t, &s->e[i]);
	while (ncap < 8 * (live + 1))
		ncap *= 2;
	free(s->ix);
	s->ix = s->cap <= UINT32_MAX ? calloc(ncap, sizeof(*s->ix)) : NULL;
	s->ix_cap = s->ix ? ncap : 0;
	s->ix_used = 0;
	if (!s->ix) {
		s->ix_off = true;
		return;
	}
	for (u64 i = 0; i < s->cap; i++)
		if (s->key[i] && tlb_alive(t, &s->e[i])) {
			struct tlb_store_ref *r = ix_find(s, s->key[i], s->e[i].ctx);
			s->ix_used += !r->key;
			*r = (struct tlb_store_ref){.key = s->key[i], .ctx = s->e[i].ctx, .slot = (u32)i};
		}
}

/* Slot j was just filled for (key, ctx); r: their place in the index, if the
 * lookup just before found it (else NULL). */
static void ix_note(struct tlb *t, struct tlb_store *s, u64 key, u32 ctx, u64 j, struct tlb_store_ref *r)
{
	if (s->ix_off)
		return;
	if (!r)
		r = ix_find(s, key, ctx);
	if (r && r->key) {
		r->slot = (u32)j;
		return;
	}
	if (!r || (s->ix_used + 1) * 2 > s->ix_cap) {
		ix_rebuild(t, s); /* slot j is live: indexed */
		return;
	}
	*r = (struct tlb_store_ref){.key = key, .ctx = ctx, .slot = (u32)j};
	s->ix_used++;
}

static int store_rebuild(struct tlb *t, struct tlb_store *s, u64 ncap)
{
	struct tlb_store n = *s; /* the index's fields; the slots are new */

	if (store_init(&n, ncap))
		return -1;
	for (u64 i = 0; i < s->cap; i++) {
		struct tlb_ent *e = &s->e[i];
		if (!tlb_alive(t, e))
			continue;
		u64 j = store_hash(e->vpn, e->level) & (n.cap - 1);
		while (n.key[j])
			j = (j + 1) & (n.cap - 1);
		n.e[j] = *e;
		n.key[j] = s->key[i];
		n.used++;
	}
	free(s->e);
	free(s->key);
	*s = n;
	if (!s->ix_off)
		ix_rebuild(t, s);
	return 0;
}

/* The live entry for (vpn, level, ctx), or NULL; *ref: where the index keeps
 * them (if it was read). */
static struct tlb_ent *store_lookup(struct tlb *t, struct tlb_store *s, int ctx, u64 vpn, int level,
				    struct tlb_store_ref **ref)
{
	u64 j = store_hash(vpn, level) & (s->cap - 1), key = tlb_ent_key(vpn, level);

	if (!s->ix_off && !t->epoch_wrapped) {
		struct tlb_store_ref *r = *ref = ix_find(s, key, (u32)ctx);
		struct tlb_ent *e = r && r->key ? &s->e[r->slot] : NULL;
		return e && s->key[r->slot] == key && e->ctx == (u32)ctx && tlb_alive(t, e) ? e : NULL;
	}
	for (u64 k; (k = s->key[j]); j = (j + 1) & (s->cap - 1)) {
		struct tlb_ent *e = &s->e[j];
		if (k == key && e->ctx == (u32)ctx && tlb_alive(t, e))
			return e;
	}
	return NULL;
}

static struct tlb_ent *store_find(struct tlb *t, struct tlb_store *s, int ctx, u64 vpn, int level)
{
	struct tlb_store_ref *r = NULL;
	return store_lookup(t, s, ctx, vpn, level, &r);
}

static struct tlb_ent *store_fill(struct tlb *t, struct tlb_store *s, int ctx, u64 vpn, int level)
{
	struct tlb_store_ref *r = NULL;
	struct tlb_ent *e = store_lookup(t, s, ctx, vpn, level, &r);

	if (!e) {
		if ((s->used + 1) * 10 > s->cap * 6) {
			u64 live = 0;
			for (u64 i = 0; i < s->cap; i++)
				live += tlb_alive(t, &s->e[i]);
			u64 ncap = s->cap;
			while ((live + 1) * 10 > ncap * 3)
				ncap *= 2;
			if (store_rebuild(t, s, ncap))
				return NULL;
			r = NULL; /* the index was rebuilt */
		}
		u64 j = store_hash(vpn, level) & (s->cap - 1);
		while (s->key[j] && tlb_alive(t, &s->e[j]))
			j = (j + 1) & (s->cap - 1);
		e = &s->e[j];
		if (!s->key[j])
			s->used++;
		s->key[j] = tlb_ent_key(vpn, level);
		e->vpn = vpn;
		e->level = (u8)level;
		e->ctx = (u32)ctx;
		e->epoch = t->ctx[ctx].epoch;
		ix_note(t, s, s->key[j], (u32)ctx, j, r);
	}
	e->epoch = t->ctx[ctx].epoch;
	e->chk = 0;
	e->chk_gen = 0;
	return e;
}

/* ---- lookups and fills ---- */

int tlb_lookup_store(struct tlb *t, int ctx, u64 gfn, struct tlb_ent **out)
{
	for (int l = 1; l <= 3; l++) {
		struct tlb_ent *e = store_find(t, &t->store, ctx, gfn >> (9 * (l - 1)), l);
		if (e) {
			*out = e;
			return 1;
		}
	}
	return 0;
}

struct tlb_ent *tlb_l2_use(struct tlb *t, int ctx, u64 vpn, int level, struct tlb_ent *e, u32 set, u32 way)
{
	tlb_touch(t, level == 3 ? &t->l2_1g : &t->l2, set, way);
	/* An L2 hit refills L1 (where the lookup has just missed). */
	struct tlb_ent *f = array_fill_probed(t, &t->l1[level - 1], ctx, vpn, level, true);
	if (!f)
		return e;
	f->pfn = e->pfn;
	f->perms = e->perms;
	f->dirty = e->dirty;
	/* The same translation: the checker's verdict on it holds. */
	f->chk = e->chk;
	f->chk_gen = e->chk_gen;
	return f;
}

/* After the L1 arrays missed (tlb_lookup()). */
int tlb_lookup_l2(struct tlb *t, int ctx, u64 gfn, struct tlb_ent **out, struct tlb_ent **src)
{
	u32 set, way;

	for (int l = 1; l <= 3; l++) {
		u64 vpn = gfn >> (9 * (l - 1));
		struct tlb_ent *e = tlb_array_find(t, l == 3 ? &t->l2_1g : &t->l2, ctx, vpn, l, &set, &way);
		if (e) {
			*out = tlb_l2_use(t, ctx, vpn, l, e, set, way);
			*src = *out == e ? NULL : e;
			return 2;
		}
	}
	return 0;
}

int tlb_fill(struct tlb *t, int ctx, u64 gfn, int level, u64 pfn, unsigned perms, int dirty, bool absent,
	     struct tlb_ent **filled)
{
	u64 vpn = gfn >> (9 * (level - 1));
	struct tlb_ent *e;

	if (t->mode == TDP_TLB_ADVERSARIAL) {
		e = store_fill(t, &t->store, ctx, vpn, level);
		if (!e)
			return -1;
		e->pfn = pfn;
		e->perms = (u8)perms;
		e->dirty = (u8)dirty;
		if (filled)
			filled[0] = e;
		return 0;
	}
	struct tlb_array *arrs[2] = {&t->l1[level - 1], level == 3 ? &t->l2_1g : &t->l2};
	for (int i = 0; i < 2; i++) {
		e = arrs[i]->sets ? array_fill_probed(t, arrs[i], ctx, vpn, level, absent) : NULL;
		if (e) {
			e->pfn = pfn;
			e->perms = (u8)perms;
			e->dirty = (u8)dirty;
		}
		if (filled)
			filled[i] = e;
	}
	return 0;
}

struct tlb_ent *tlb_psc_lookup(struct tlb *t, int ctx, u64 gfn, int top_level)
{
	u32 set, way;

	if (t->mode != TDP_TLB_ADVERSARIAL) {
		/* Deepest first: a PDE-cache hit skips the most levels. */
		for (int l = 2; l <= top_level; l++) {
			struct tlb_ent *e = tlb_array_find(t, &t->psc[l], ctx, gfn >> (9 * (l - 1)), l, &set, &way);
			if (e) {
				tlb_touch(t, &t->psc[l], set, way);
				return e;
			}
		}
		return NULL;
	}
	for (int l = 2; l <= top_level; l++) {
		struct tlb_ent *e = store_find(t, &t->pstore, ctx, gfn >> (9 * (l - 1)), l);
		if (e)
			return e;
	}
	return NULL;
}

int tlb_psc_fill(struct tlb *t, int ctx, u64 gfn, int level, u64 table_pfn, unsigned perms, u32 gen)
{
	u64 vpn = gfn >> (9 * (level - 1));
	struct tlb_ent *e = t->mode == TDP_TLB_ADVERSARIAL ? store_fill(t, &t->pstore, ctx, vpn, level)
							    : array_fill(t, &t->psc[level], ctx, vpn, level);
	if (!e)
		return t->mode == TDP_TLB_ADVERSARIAL ? -1 : 0;
	e->pfn = table_pfn;
	e->perms = (u8)perms;
	e->gen = gen;
	e->dirty = 0;
	return 0;
}

static void kill_vpn_array(struct tlb *t, struct tlb_array *a, u64 vpn, int level)
{
	if (!a->sets)
		return;
	struct tlb_ent *row = &a->e[(size_t)tlb_set_of(a, vpn) * a->ways];
	for (u32 w = 0; w < a->ways; w++)
		if (row[w].vpn == vpn && row[w].level == level)
			row[w].epoch = 0;
	(void)t;
}

static void kill_vpn_store(struct tlb_store *s, u64 vpn, int level)
{
	u64 j = store_hash(vpn, level) & (s->cap - 1), key = tlb_ent_key(vpn, level);
	for (u64 k; (k = s->key[j]); j = (j + 1) & (s->cap - 1))
		if (k == key)
			s->e[j].epoch = 0;
}

static void kill_psc_range(struct tlb_ent *e, u64 n, u64 start, u64 end)
{
	for (u64 i = 0; i < n; i++) {
		if (!e[i].level)
			continue;
		u64 span = 1ull << (9 * (e[i].level - 1));
		u64 base = e[i].vpn * span;
		if (base < end && start < base + span)
			e[i].epoch = 0;
	}
}

static void kill_range_scan(struct tlb_ent *e, u64 n, int level, u64 vstart, u64 vend)
{
	for (u64 i = 0; i < n; i++)
		if (e[i].level == level && e[i].vpn >= vstart && e[i].vpn <= vend)
			e[i].epoch = 0;
}

static void kill_range_array(struct tlb *t, struct tlb_array *a, int level, u64 vstart, u64 vend)
{
	u64 size = (u64)a->sets * a->ways;
	if (!a->sets)
		return;
	if (vend - vstart + 1 > size) {
		kill_range_scan(a->e, size, level, vstart, vend); /* cheaper than probing */
		return;
	}
	for (u64 v = vstart; v <= vend; v++)
		kill_vpn_array(t, a, v, level);
}

void tlb_flush_range(struct tlb *t, u64 gfn, u64 npages)
{
	/* A precise ranged flush: every size of translation and every
	 * paging-structure-cache entry that overlaps [gfn, gfn + npages), in any
	 * context; it costs min(pages, entries) per structure. */
	u64 end = gfn + npages;

	if (npages == 0)
		return;
	entries_may_die(t);
	for (int l = 1; l <= 3; l++) {
		u64 sh = 9 * (l - 1), vs = gfn >> sh, ve = (end - 1) >> sh;
		if (t->mode == TDP_TLB_ADVERSARIAL) {
			if (ve - vs + 1 > t->store.cap)
				kill_range_scan(t->store.e, t->store.cap, l, vs, ve);
			else
				for (u64 v = vs; v <= ve; v++)
					kill_vpn_store(&t->store, v, l);
		} else {
			kill_range_array(t, &t->l1[l - 1], l, vs, ve);
			kill_range_array(t, l == 3 ? &t->l2_1g : &t->l2, l, vs, ve);
		}
	}
	/* Paging-structure caches: every entry whose span overlaps the range. */
	if (t->mode == TDP_TLB_ADVERSARIAL) {
		kill_psc_range(t->pstore.e, t->pstore.cap, gfn, end);
	} else {
		for (int l = 2; l <= 5; l++)
			kill_psc_range(t->psc[l].e, (u64)t->psc[l].sets * t->psc[l].ways, gfn, end);
	}
}

void tlb_flush_gfn_ctx(struct tlb *t, int ctx, u64 gfn)
{
	/* An EPT violation drops the guest-physical mappings (TLB and PSC) that
	 * would translate the faulting GPA in the current context (Intel SDM Vol. 3C
	 * "Operations that Invalidate Cached Mappings", 28.3.3.1 in the 2016 edition). */
	struct tlb_ent *e;
	u32 set, way;

	entries_may_die(t);
	for (int l = 1; l <= 3; l++) {
		u64 vpn = gfn >> (9 * (l - 1));
		if (t->mode == TDP_TLB_ADVERSARIAL) {
			if ((e = store_find(t, &t->store, ctx, vpn, l)))
				e->epoch = 0;
			continue;
		}
		if ((e = tlb_array_find(t, &t->l1[l - 1], ctx, vpn, l, &set, &way)))
			e->epoch = 0;
		if ((e = tlb_array_find(t, l == 3 ? &t->l2_1g : &t->l2, ctx, vpn, l, &set, &way)))
			e->epoch = 0;
	}
	while ((e = tlb_psc_lookup(t, ctx, gfn, 5)))
		e->epoch = 0;
}

static void forget_checks(struct tlb_ent *e, u64 n)
{
	for (u64 i = 0; i < n; i++)
		e[i].chk = 0;
}

void tlb_forget_checks(struct tlb *t)
{
	if (t->mode == TDP_TLB_ADVERSARIAL) {
		forget_checks(t->store.e, t->store.cap);
		return;
	}
	for (int i = 0; i < 3; i++)
		forget_checks(t->l1[i].e, (u64)t->l1[i].sets * t->l1[i].ways);
	forget_checks(t->l2.e, (u64)t->l2.sets * t->l2.ways);
	forget_checks(t->l2_1g.e, (u64)t->l2_1g.sets * t->l2_1g.ways);
}

static u64 count_alive(const struct tlb *t, const struct tlb_ent *e, u64 n)
{
	u64 c = 0;
	for (u64 i = 0; i < n; i++)
		c += tlb_alive(t, &e[i]);
	return c;
}

u64 tlb_live_entries(const struct tlb *t, int psc)
{
	u64 c = 0;

	if (t->mode == TDP_TLB_ADVERSARIAL)
		return psc ? count_alive(t, t->pstore.e, t->pstore.cap) : count_alive(t, t->store.e, t->store.cap);
	if (psc) {
		for (int l = 2; l <= 5; l++)
			c += count_alive(t, t->psc[l].e, (u64)t->psc[l].sets * t->psc[l].ways);
		return c;
	}
	for (int i = 0; i < 3; i++)
		c += count_alive(t, t->l1[i].e, (u64)t->l1[i].sets * t->l1[i].ways);
	c += count_alive(t, t->l2.e, (u64)t->l2.sets * t->l2.ways);
	c += count_alive(t, t->l2_1g.e, (u64)t->l2_1g.sets * t->l2_1g.ways);
	return c;
}

static size_t dump_entries(const struct tlb *t, const struct tlb_ent *e, u64 n, int kind,
			   int structure, struct tdp_tlb_entry *out, size_t at, size_t max)
{
	for (u64 i = 0; i < n; i++) {
		if (!tlb_alive(t, &e[i]))
			continue;
		if (at < max) {
			u64 key = t->ctx[e[i].ctx].key;
			out[at] = (struct tdp_tlb_entry){
				.kind = kind, .level = e[i].level, .tag = key & ((1ull << 62) - 1),
				.vpn = e[i].vpn, .pfn = e[i].pfn, .perms = e[i].perms,
				.dirty = e[i].dirty, .structure = structure};
		}
		at++;
	}
	return at;
}

size_t tlb_dump(const struct tlb *t, struct tdp_tlb_entry *out, size_t max, int svm)
{
	size_t n = 0;
	(void)svm;
	if (t->mode == TDP_TLB_ADVERSARIAL) {
		n = dump_entries(t, t->store.e, t->store.cap, 0, 3, out, n, max);
		return dump_entries(t, t->pstore.e, t->pstore.cap, 1, 3, out, n, max);
	}
	for (int i = 0; i < 3; i++)
		n = dump_entries(t, t->l1[i].e, (u64)t->l1[i].sets * t->l1[i].ways, 0, 0, out, n, max);
	n = dump_entries(t, t->l2.e, (u64)t->l2.sets * t->l2.ways, 0, 1, out, n, max);
	n = dump_entries(t, t->l2_1g.e, (u64)t->l2_1g.sets * t->l2_1g.ways, 0, 1, out, n, max);
	for (int l = 2; l <= 5; l++)
		n = dump_entries(t, t->psc[l].e, (u64)t->psc[l].sets * t->psc[l].ways, 1, 2, out, n, max);
	return n;
}

static u64 mix(u64 h, u64 v)
{
	h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
	return h;
}

static u64 digest_entries(const struct tlb *t, const struct tlb_ent *e, u64 n, u64 h)
{
	/* Order-independent within a structure: the adversarial store's layout
	 * depends on its rehash history, the contents do not. */
	u64 acc = 0;
	for (u64 i = 0; i < n; i++) {
		if (!tlb_alive(t, &e[i]))
			continue;
		u64 x = mix(mix(mix(mix(0, e[i].vpn), e[i].pfn), t->ctx[e[i].ctx].key),
			    ((u64)e[i].level << 16) | ((u64)e[i].perms << 8) | e[i].dirty);
		acc += x * 0xff51afd7ed558ccdull;
	}
	return mix(h, acc);
}

u64 tlb_digest(const struct tlb *t, u64 h)
{
	if (t->mode == TDP_TLB_ADVERSARIAL) {
		h = digest_entries(t, t->store.e, t->store.cap, h);
		return digest_entries(t, t->pstore.e, t->pstore.cap, h);
	}
	for (int i = 0; i < 3; i++)
		h = digest_entries(t, t->l1[i].e, (u64)t->l1[i].sets * t->l1[i].ways, h);
	h = digest_entries(t, t->l2.e, (u64)t->l2.sets * t->l2.ways, h);
	h = digest_entries(t, t->l2_1g.e, (u64)t->l2_1g.sets * t->l2_1g.ways, h);
	for (int l = 2; l <= 5; l++)
		h = digest_entries(t, t->psc[l].e, (u64)t->psc[l].sets * t->psc[l].ways, h);
	for (u32 i = 0; i < t->nctx; i++)
		h = mix(h, t->ctx[i].key);
	return h;
}

/* ------------------------------------------------------------------ presets
 * The TLB geometry of known CPUs (entries and associativity per array). */

static void arr(struct tdp_tlb_array_config *a, int entries, int ways)
{
	a->ways = ways;
	a->sets = entries / ways;
}

int tdp_tlb_preset(const char *name, struct tdp_tlb_config *c)
{
	memset(c, 0, sizeof(*c));
	c->mode = TDP_TLB_SETASSOC;
	c->repl = TDP_REPL_LRU;
	/* [MODEL CHOICE] PSC sizes are not enumerated by any CPU (no CPUID leaf
	 * describes them): PDE cache 32, PDPTE cache 4, PML4E/PML5E caches 2, fully
	 * associative. The TLB arrays below are what CPUID leaf 18h (Intel) and leaves
	 * 8000_0005/6/19 (AMD) enumerate on each CPU. */
	arr(&c->psc[2], 32, 32);
	arr(&c->psc[3], 4, 4);
	arr(&c->psc[4], 2, 2);
	arr(&c->psc[5], 2, 2);
	if (!strcmp(name, "skylake")) {
		arr(&c->l1[0], 64, 4);
		arr(&c->l1[1], 32, 4);
		arr(&c->l1[2], 4, 4);
		arr(&c->l2, 1536, 12);
		arr(&c->l2_1g, 16, 4);
	} else if (!strcmp(name, "icelake") || !strcmp(name, "goldencove")) {
		arr(&c->l1[0], 64, 4);
		arr(&c->l1[1], 32, 4);
		arr(&c->l1[2], 8, 8);
		arr(&c->l2, 1024, 8);
		arr(&c->l2_1g, 1024, 8);
	} else if (!strcmp(name, "zen2") || !strcmp(name, "zen3")) {
		arr(&c->l1[0], 64, 64);
		arr(&c->l1[1], 64, 64);
		arr(&c->l1[2], 64, 64);
		arr(&c->l2, 2048, 8);
		if (!strcmp(name, "zen3"))
			arr(&c->l2_1g, 64, 64);
	} else if (!strcmp(name, "zen4")) {
		arr(&c->l1[0], 72, 72);
		arr(&c->l1[1], 72, 72);
		arr(&c->l1[2], 72, 72);
		arr(&c->l2, 3072, 12);
		arr(&c->l2_1g, 64, 64);
	} else if (!strcmp(name, "adversarial")) {
		c->mode = TDP_TLB_ADVERSARIAL;
	} else {
		return TDP_EINVAL;
	}
	return 0;
}
