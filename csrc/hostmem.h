/* hostmem.h — host physical frames: a pool of 4 KiB frames for page tables and
 * guest pages, with a generation per frame (bumped on free), LIFO reuse, RCU-style
 * deferred freeing and an optional frame limit. */
#ifndef TDPFAST_HOSTMEM_H
#define TDPFAST_HOSTMEM_H
#include <stddef.h>
#include "spte.h"
#include "tdpfast.h"

/* The states of a pool frame: enum tdp_frame_state (tdpfast.h), which also names
 * the page a violation's stale translation points at outside the pool. */
enum frame_state {
	FRAME_UNUSED = TDP_FRAME_UNUSED, /* never handed out */
	FRAME_FREE = TDP_FRAME_FREE,     /* on the free stack */
	FRAME_TABLE = TDP_FRAME_TABLE,   /* a TDP page-table page (struct kvm_mmu_page) */
	FRAME_GUEST = TDP_FRAME_GUEST,   /* backs a guest page */
	FRAME_RCU = TDP_FRAME_RCU,       /* unlinked/released, waiting for the grace period */
};

#define NO_FRAME 0xffffffffu
#define ARENA_CHUNK_FRAMES 512u
_Static_assert((ARENA_CHUNK_FRAMES & (ARENA_CHUNK_FRAMES - 1)) == 0, "arena chunks are a power of two frames");

/* Metadata of one pool frame; the sp_* fields describe a page-table page. */
struct frame {
	u32 gen;        /* bumped every time the frame returns to the pool */
	u8 state;
	u8 sp_level;    /* level of the entries in this table */
	u8 sp_unlinked; /* removed from its tree (handle_removed_pt ran) */
	u8 sp_nx;       /* nx_huge_page_disallowed: on the possible-NX list */
	u32 sp_root;    /* id of the root this table belongs to */
	u32 parent;     /* frame of the parent table, NO_FRAME for roots */
	u64 sp_gfn;     /* base gfn covered by the table */
	u64 owner_gfn;  /* FRAME_GUEST: the gfn it backs */
};

struct hostmem {
	u64 base_pfn;        /* pool frame i has host pfn base_pfn + i */
	u32 limit;           /* max frames handed out at once (0 = none) */
	u32 nframes;         /* frames ever touched (indices < nframes are valid) */
	u32 cap;
	struct frame *frames;
	u64 **chunks;        /* table contents, ARENA_CHUNK_FRAMES frames per chunk */
	u32 nchunks;
	u32 *free_stack;     /* LIFO: top is the next frame handed out */
	u32 nfree;
	u32 *rcu;            /* frames waiting for the grace period, in free order */
	u32 nrcu, rcu_cap;
	u32 in_use;          /* TABLE + GUEST + RCU */
	u64 grace_periods;
	u64 frames_freed;
	/* Frames written or re-purposed since the state invariants' walk last looked
	 * (checker.c), noted only while `track` is set: noted[f] holds HOSTMEM_NOTE_*
	 * bits, noted_list the frames that have any. noted_lost: a note could not be
	 * stored, so the walk must assume that every frame changed. */
	u8 *noted;
	u32 noted_size;
	u32 *noted_list;
	u32 nnoted, noted_cap;
	bool track, noted_lost;
};

enum {
	HOSTMEM_NOTE_WRITE = 1, /* an entry of the table may have been written */
	HOSTMEM_NOTE_META = 2,  /* handed out, freed or queued for RCU: its metadata changed */
};

int hostmem_init(struct hostmem *h, u64 base_pfn, u32 limit);
void hostmem_destroy(struct hostmem *h);
/* Frames that can still be handed out (respecting the limit). */
static inline u64 hostmem_available(const struct hostmem *h)
{
	if (!h->limit)
		return (u64)(0x7fffffffu - h->in_use);
	return h->in_use >= h->limit ? 0 : h->limit - h->in_use;
}
u32 hostmem_alloc(struct hostmem *h, int state); /* NO_FRAME when exhausted */
void hostmem_free_now(struct hostmem *h, u32 f);
void hostmem_free_rcu(struct hostmem *h, u32 f); /* call_rcu() */
void hostmem_synchronize_rcu(struct hostmem *h); /* end of a grace period */
/* The 512 entries of frame f, to write them: noted as written while h->track is
 * set. Readers use hostmem_table_read(), which notes nothing. */
u64 *hostmem_table(struct hostmem *h, u32 f);
u64 *hostmem_table_read(struct hostmem *h, u32 f);
void hostmem_note_slow(struct hostmem *h, u32 f, unsigned what);
static inline void hostmem_note(struct hostmem *h, u32 f, unsigned what)
{
	if (h->track)
		hostmem_note_slow(h, f, what);
}
/* A write through a pointer into the arena (from hostmem_table_read() or an
 * iterator) whose frame the writer does not hold. */
void hostmem_note_ptr(struct hostmem *h, const u64 *p);
static inline u64 hostmem_pfn(const struct hostmem *h, u32 f) { return h->base_pfn + f; }
/* The 8-byte entry at hpa as the hardware walker reads it: a pool frame's contents.
 * [MODEL CHOICE] guest data is not modelled: a frame that is not a table (or was
 * never one), or a page outside the pool, reads as zeroes, i.e. a not-present entry. */
static inline u64 hostmem_read_entry(const struct hostmem *h, u64 hpa)
{
	u64 pfn = hpa >> 12;
	if (pfn < h->base_pfn || pfn - h->base_pfn >= h->nframes)
		return 0;
	u32 f = (u32)(pfn - h->base_pfn);
	if (f >= h->nchunks * ARENA_CHUNK_FRAMES || !h->chunks[f / ARENA_CHUNK_FRAMES] ||
	    h->frames[f].state == FRAME_GUEST)
		return 0;
	return h->chunks[f / ARENA_CHUNK_FRAMES][(size_t)(f % ARENA_CHUNK_FRAMES) * 512 + ((hpa & 0xfff) >> 3)];
}

/* Pool frame index of a host pfn, NO_FRAME if outside the pool. */
static inline u32 hostmem_frame_of(const struct hostmem *h, u64 pfn)
{
	if (pfn < h->base_pfn || pfn - h->base_pfn >= h->nframes)
		return NO_FRAME;
	return (u32)(pfn - h->base_pfn);
}

#endif
