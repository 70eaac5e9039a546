/* vm.h — the VM object everything hangs off: configuration, policy, cost model,
 * memslots (guest memory truth), host events, the checker, counters and the event
 * log. No mutable state lives outside this struct. Every file of the engine
 * includes this header; each concept's own header declares its functions. */
#ifndef TDPFAST_VM_H
#define TDPFAST_VM_H
#include <stdio.h>
#include "tdpfast.h"
#include "hostmem.h"
#include "tdp_mmu.h"
#include "cpu.h"
#include "walk.h"
#include "memslot.h"
#include "mmu_notifier.h"
#include "mmu.h"
#include "checker.h"
#include "event.h"
#include "coverage.h"
#include "guest_paging.h"

enum stat_id {
#define STAT(name) ST_##name,
#include "stats.def"
#undef STAT
	ST_COUNT
};

/* The engine's flush sites (flush_sites.def). FLUSH_SITE(vm, ID) guards each one: true
 * unless this VM is the mutant that removes it (struct tdp_config.mutant). */
enum flush_site_id {
	FS_NONE = 0,
#define SITE(id, name, arch, where, what) FS_##id,
#include "flush_sites.def"
#undef SITE
	FS_COUNT
};
#define FLUSH_SITE(vm, id) ((vm)->cfg.mutant != FS_##id)

struct tdp_vm {
	struct tdp_config cfg;
	struct tdp_tlb_config tlbcfg;
	struct tdp_policy pol;
	struct tdp_costs costs;
	struct spte_masks masks;
	struct tdp_hw_params hw;
	struct hostmem mem;
	char err[512];

	struct tdp_root *roots;
	int nroots, roots_cap;
	u32 next_root_id;

	struct memslot *slots;
	int nslots;
	int slot_hint; /* vm_slot_of(): where it last found a gfn (a hint, checked before use) */
	u64 host_next_region_pfn;
	u32 memslots_gen;
	u32 truth_gen;        /* the checker's truth generation: memslot_truth_changed() */
	u64 mmu_invalidate_seq;
	int mmu_invalidate_in_progress;
	u64 mmu_invalidate_start, mmu_invalidate_end;

	u32 *nx_list;         /* possible NX huge pages (frames), oldest first */
	u32 nnx, nx_cap;

	struct vcpu *vcpus;
	struct pcpu *pcpus;
	struct guest_mem gmem; /* the guest's page tables (guest_paging.c) */

	u64 stats[ST_COUNT];

	struct tdp_violation *viol;
	size_t nviol, viol_cap;

	struct tdp_event *ev;
	size_t nev, ev_cap;
	u8 *blob;             /* access batches: 9 bytes per access */
	size_t nblob, blob_cap;
	u64 nlogged;          /* events logged, recorded or not (cfg.record off) */
	u64 cur_event;        /* index the current top-level operation gets */

	struct tdp_trace_rec *tr;
	size_t ntr, tr_cap;

	struct vm_op **ops;   /* stepped operations in flight */
	int nops;
	u32 next_op_id;

	u64 dropped_records;  /* events, violations, trace records lost for want of host memory */
	bool records_lost;    /* ... since the last top-level call: the next one fails */
	u64 warnings;         /* TDP_WARN_ON()s that fired */
	char warning[192];    /* the first of them */

	/* Explorer feedback (tdp_fuzz only; never changes the engine's behaviour): the
	 * last TLB hit whose translation the vCPU's current tables no longer give. One
	 * host event on that gfn turns it into a violation if no flush comes first.
	 * A weak hazard: the same page, cached at another page size. */
	bool hazard_probe, hazard, hazard_weak;
	int hazard_vcpu;
	u64 hazard_gfn;

	struct checker_state inv; /* the state invariants' bookkeeping (checker.c) */
	struct coverage cov;      /* the explorer's coverage signatures (coverage.h) */
};

/* Set the message tdp_errmsg() returns; returns code. */
int vm_err(struct tdp_vm *vm, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline void vm_trace(struct tdp_vm *vm, u32 kind, u32 level, u64 a, u64 b, u64 c)
{
	if (vm->cfg.trace)
		vm_trace_rec(vm, kind, level, a, b, c);
}
static inline void vm_cost(struct tdp_vm *vm, u64 c) { vm->stats[ST_cycles] += c; }

/* The memslot that holds gfn, or NULL. Memslots never overlap: a slot in use that
 * holds gfn is the one. Runs of gfns (map_range, batches of faults) mostly stay in
 * the slot found last. */
static inline struct memslot *vm_slot_of(struct tdp_vm *vm, u64 gfn)
{
	if (vm->slot_hint < vm->nslots) {
		struct memslot *s = &vm->slots[vm->slot_hint];
		if (s->used && gfn - s->base_gfn < s->npages)
			return s;
	}
	return vm_slot_of_slow(vm, gfn);
}

/* Every top-level operation (a public call that changes the model) starts and
 * ends here: the event index a violation is attributed to, and the grace period
 * the policy may end after it. */
int vm_op_begin(struct tdp_vm *vm);   /* TDP_ENOMEM if records were lost since the last call */
void vm_op_start(struct tdp_vm *vm);  /* the same, for the second step of a composed call */
void vm_op_end(struct tdp_vm *vm);
#define VM_OP_BEGIN(vm)                              \
	do {                                         \
		int op_begin_err_ = vm_op_begin(vm); \
		if (op_begin_err_)                   \
			return op_begin_err_;        \
	} while (0)

/* A record (event, violation, trace) that could not be kept: counted, and the next
 * top-level call fails with TDP_ENOMEM so that the loss is never silent. */
void vm_drop_record(struct tdp_vm *vm);

/* KVM's WARN_ON(): a state the model must never reach. It is counted and the first
 * one described (tdp_warn_count(), tdp_warn_message()); tests assert there are
 * none. Evaluates to the condition, so it can guard a way out. */
bool vm_warn(struct tdp_vm *vm, const char *cond, const char *file, int line);
#define TDP_WARN_ON(vm, cond) ((cond) ? vm_warn((vm), #cond, __FILE__, __LINE__) : false)

/* Argument checks shared by the entry points (0, or TDP_EINVAL with the message set). */
int vm_check_gfn(struct tdp_vm *vm, const char *what, u64 gfn);
int vm_check_range(struct tdp_vm *vm, u64 start, u64 end);
int vm_check_vcpu(struct tdp_vm *vm, int vcpu);
int vm_check_pcpu(struct tdp_vm *vm, int pcpu);
/* A vCPU that runs guest code: valid and in guest mode (TDP_ESTATE otherwise). */
int vm_check_in_guest(struct tdp_vm *vm, int vcpu);

/* Grace periods: frees queued with call_rcu() happen here. */
void vm_rcu_quiescent(struct tdp_vm *vm, bool at_yield);

#endif
