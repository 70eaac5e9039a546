/* vm.h — the VM object everything hangs off: configuration, policy, cost model,
 * memslots (guest memory truth), host events, the checker, counters and the event
 * log. No mutable state lives outside this struct. */
#ifndef TDPFAST_VM_H
#define TDPFAST_VM_H
#include <stdio.h>
#include "tdpfast.h"
#include "hostmem.h"
#include "tdp_mmu.h"
#include "cpu.h"
#include "walk.h"

#define NO_PFN (~0ull)

enum stat_id {
#define STAT(name) ST_##name,
#include "stats.def"
#undef STAT
	ST_COUNT
};

/* A memslot's host mapping: gfn -> host pfn. By default the slot is backed by one
 * contiguous, 1 GiB-aligned host region (hugetlbfs-like); pages the host
 * unmapped or migrated are recorded per 512-gfn chunk, so an untouched slot costs
 * no memory per page. [MODEL CHOICE] frames of the slot region are never reused;
 * replacement pages come from the frame pool (LIFO), which also holds page tables. */
struct memslot {
	int id;
	bool used;
	u64 base_gfn, npages;
	u32 flags;
	int max_level;
	u64 host_base_pfn;
	u64 **dev;            /* dev[chunk]: NULL = identity, else 512 pfns (NO_PFN: unbacked) */
	u32 *dev_count_1g;    /* deviating chunks per 1 GiB region */
	u64 *dirty;           /* dirty bitmap (dirty logging) */
	u64 *wrtrack;         /* gfns write-tracked by KVM (write_protect_gfn) */
	u64 nwrtrack;
	bool deleting;        /* KVM_MEMSLOT_INVALID: a stepped deletion is in progress */
};

/* A stepped long operation and what its caller does when it ends. */
struct vm_op {
	u32 id;
	int kind;             /* enum tdp_op_kind */
	u64 a, b, c;
	struct tdp_op op;
};

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
	u64 host_next_region_pfn;
	u32 memslots_gen;
	u64 mmu_invalidate_seq;
	int mmu_invalidate_in_progress;
	u64 mmu_invalidate_start, mmu_invalidate_end;

	u32 *nx_list;         /* possible NX huge pages (frames), oldest first */
	u32 nnx, nx_cap;

	struct vcpu *vcpus;
	struct pcpu *pcpus;

	u64 stats[ST_COUNT];

	struct tdp_violation *viol;
	size_t nviol, viol_cap;

	struct tdp_event *ev;
	size_t nev, ev_cap;
	u8 *blob;             /* access batches: 9 bytes per access */
	size_t nblob, blob_cap;
	u64 cur_event;        /* index the current top-level operation gets */

	struct tdp_trace_rec *tr;
	size_t ntr, tr_cap;

	struct vm_op **ops;   /* stepped operations in flight */
	int nops;
	u32 next_op_id;

	/* Explorer feedback (tdp_fuzz only; never changes the engine's behaviour): the
	 * last TLB hit whose translation the vCPU's current tables no longer give. One
	 * host event on that gfn turns it into a violation if no flush comes first.
	 * A weak hazard: the same page, cached at another page size. */
	bool hazard_probe, hazard, hazard_weak;
	int hazard_vcpu;
	u64 hazard_gfn;
};

enum ev_op {
	EV_MEMSLOT_ADD = 1, EV_MEMSLOT_DELETE, EV_HOST_UNMAP, EV_HOST_MIGRATE, EV_HOST_AGE,
	EV_DIRTY_LOG_ENABLE, EV_DIRTY_LOG_GET, EV_WRITE_PROTECT_GFN, EV_ALLOC_ROOT, EV_PUT_ROOT,
	EV_INVALIDATE_ALL, EV_ZAP_INVALIDATED, EV_ZAP_ALL_FAST, EV_MAP, EV_MAP_RANGE, EV_ZAP_RANGE,
	EV_ZAP_ROOT, EV_ZAP_SP, EV_WRPROT, EV_CLEAR_DIRTY, EV_AGE, EV_SPLIT, EV_RECOVER,
	EV_NX_RECOVER, EV_VCPU_RUN, EV_VCPU_EXIT, EV_VCPU_REQUEST, EV_ACCESS, EV_ACCESS_BATCH,
	EV_FLUSH_REMOTE, EV_FLUSH_RANGE, EV_INVEPT, EV_INVVPID, EV_TLB_CONTROL, EV_SYNC_RCU,
	EV_TLB_JUNK, EV_OP_START, EV_OP_STEP
};

enum tr_kind {
	TR_SPTE_CHANGED = 1, TR_REMOTE_FLUSH, TR_RANGE_FLUSH, TR_VENDOR_FLUSH, TR_ROOT_ALLOC,
	TR_ROOT_PUT, TR_ROOT_FREE, TR_FAULT, TR_YIELD, TR_IPI, TR_NEW_ASID
};

int vm_err(struct tdp_vm *vm, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void vm_trace_rec(struct tdp_vm *vm, u32 kind, u32 level, u64 a, u64 b, u64 c);
static inline void vm_trace(struct tdp_vm *vm, u32 kind, u32 level, u64 a, u64 b, u64 c)
{
	if (vm->cfg.trace)
		vm_trace_rec(vm, kind, level, a, b, c);
}
static inline void vm_cost(struct tdp_vm *vm, u64 c) { vm->stats[ST_cycles] += c; }

/* Memslots: the truth the checker compares against. */
struct memslot *vm_slot_of(struct tdp_vm *vm, u64 gfn);
struct vm_op *vm_find_op(struct tdp_vm *vm, u32 id, int *idx); /* a stepped operation in flight */
u64 vm_gfn_to_pfn(struct tdp_vm *vm, struct memslot *s, u64 gfn);
u64 vm_fault_in_pfn(struct tdp_vm *vm, struct memslot *s, u64 gfn); /* allocates if unbacked */
int vm_max_mapping_level(struct tdp_vm *vm, struct memslot *s, u64 gfn);
bool vm_gfn_writable(struct tdp_vm *vm, struct memslot *s, u64 gfn);
void vm_mark_dirty(struct tdp_vm *vm, struct memslot *s, u64 gfn);
bool vm_gfn_is_dirty(struct memslot *s, u64 gfn);
u64 vm_max_gfn(struct tdp_vm *vm);

/* The checker. */
void vm_report(struct tdp_vm *vm, int kind, struct vcpu *v, u64 gpa, u64 tag, u64 stale_pfn,
	       u64 expected_pfn, int access, int level, int frame_state, u64 batch_index);

/* Grace periods: frees queued with call_rcu() happen here. */
void vm_rcu_quiescent(struct tdp_vm *vm, bool at_yield);

#endif
