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
	return f;
}

u64 *hostmem_table(struct hostmem *h, u32 f)
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

