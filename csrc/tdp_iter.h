/* tdp_iter.h — KVM's TDP iterator (mmu/tdp_iter.c): a pre-order walk over the
 * SPTEs of one root that overlap a gfn window, able to yield and restart from the
 * root at next_last_level_gfn without skipping an entry (tdp_iter_restart(),
 * tdp_mmu_iter_cond_resched()). */
#ifndef TDPFAST_TDP_ITER_H
#define TDPFAST_TDP_ITER_H
#include "hostmem.h"

struct tdp_iter {
	u64 next_last_level_gfn; /* where to resume after a yield */
	u64 yielded_gfn;         /* next_last_level_gfn at the last yield */
	u32 pt_path[6];          /* pt_path[level]: frame of the table holding `level` entries */
	u32 pt_gen[6];           /* that frame's generation when the walk entered it */
	u32 stale_frame;         /* NO_FRAME, or a table freed under the walk (then valid = false) */
	u64 *sptep;
	u64 old_spte;            /* snapshot of *sptep */
	u64 gfn;                 /* base gfn of the current SPTE */
	int root_level, min_level, level;
	bool valid, yielded;
	bool skip_after_restart; /* bug B9: advance past the restart entry */
	bool no_restart;         /* test hook: after a yield, go on from the tables held before it */
	struct hostmem *h;
};

void tdp_iter_start(struct tdp_iter *it, struct hostmem *h, u32 root_frame, int root_level,
		    int min_level, u64 start_gfn);
void tdp_iter_next(struct tdp_iter *it);
void tdp_iter_restart(struct tdp_iter *it);
/* Frame holding the current SPTE and its index in it. */
static inline u32 tdp_iter_frame(const struct tdp_iter *it) { return it->pt_path[it->level]; }
static inline int tdp_iter_index(const struct tdp_iter *it) { return spte_index(it->gfn, it->level); }
/* The handles the iterator holds (pt_path) are checked against the frames' generations
 * before every step: a table freed since the walk entered it (a walker that kept a
 * pointer across a yield, where the RCU grace period may end) stops the walk with
 * stale_frame set, for the caller to report - never a read of a reused page. */
/* The child table of a present non-leaf SPTE, NO_FRAME otherwise. */
u32 spte_to_child_frame(const struct hostmem *h, u64 spte, int level);

#endif
