/* coverage.h — the explorer's coverage signatures. Not a KVM concept: what tdp_fuzz()
 * reached, so that a clean run says how much of the state space was searched.
 *
 * A signature is one (operation × SPTE transition × level × root state × cached-
 * translation state): the top-level operation in progress (its event code, events.def),
 * what the SPTE change was (below), the SPTE's level, whether the root being walked is
 * invalid, and whether a translation was cached since the last remote TLB flush (a TLB
 * fill since kvm_flush_remote_tlbs(), so stale entries may exist). Every SPTE change of
 * the TDP MMU is noted, in handle_changed_spte() and wherever a bulk path or aging writes
 * SPTEs without it, so the set does not depend on which path ran. Noting only writes to
 * this struct: it never changes what the engine does. */
#ifndef TDPFAST_COVERAGE_H
#define TDPFAST_COVERAGE_H
#include "spte.h"

enum cov_transition {
	COV_NP_TO_LEAF,      /* a fault maps */
	COV_NP_TO_TABLE,     /* a fault links a new table */
	COV_LEAF_TO_NP,      /* a leaf zapped */
	COV_TABLE_TO_NP,     /* a table unlinked */
	COV_LEAF_TO_LEAF,    /* permissions, A/D, access tracking, or a new pfn */
	COV_LEAF_TO_TABLE,   /* a huge page split */
	COV_TABLE_TO_LEAF,   /* a table collapsed into a huge leaf (recovery) */
	COV_FROZEN,          /* to or from the frozen SPTE (an unlinked table's entries, atomic zaps) */
	COV_NTRANSITIONS
};

#define COV_OPS 64     /* event codes (events.def) below 64; a code above folds in */
#define COV_LEVELS 8
#define COV_SIGNATURES (COV_OPS * COV_NTRANSITIONS * COV_LEVELS * 2 * 2)
#define COV_WORDS (COV_SIGNATURES / 64)

struct coverage {
	bool on;             /* tdp_fuzz() turns it on for its VM */
	bool root_invalid;   /* the root of the walk in progress is invalid */
	bool tlb_warm;       /* a TLB fill since the last remote flush */
	u8 op;               /* event code of the top-level operation in progress */
	u64 bits[COV_WORDS];
};

static inline enum cov_transition cov_transition(u64 old, u64 new, int level)
{
	bool op = is_shadow_present_pte(old), np = is_shadow_present_pte(new);

	if (is_frozen_spte(old) || is_frozen_spte(new))
		return COV_FROZEN;
	if (!op)
		return np && !is_last_spte(new, level) ? COV_NP_TO_TABLE : COV_NP_TO_LEAF;
	bool ol = is_last_spte(old, level);
	if (!np)
		return ol ? COV_LEAF_TO_NP : COV_TABLE_TO_NP;
	bool nl = is_last_spte(new, level);
	if (ol)
		return nl ? COV_LEAF_TO_LEAF : COV_LEAF_TO_TABLE;
	return nl ? COV_TABLE_TO_LEAF : COV_TABLE_TO_NP; /* a table replaced by another */
}

static inline void cov_note(struct coverage *c, enum cov_transition t, int level)
{
	u32 i = (((((u32)(c->op % COV_OPS) * COV_NTRANSITIONS + (u32)t) * COV_LEVELS + (u32)(level & 7)) * 2 +
		  c->root_invalid) * 2) + c->tlb_warm;
	c->bits[i / 64] |= 1ull << (i % 64);
}

static inline void cov_note_spte(struct coverage *c, u64 old, u64 new, int level)
{
	if (c->on)
		cov_note(c, cov_transition(old, new, level), level);
}

#endif
