/* checker.h — every violation decision: a guest access used a translation (from a
 * TLB, a paging-structure cache or a walk) that the truth (memslots, frames)
 * no longer gives, or a fault never made progress. Reports go to the VM's
 * violation list; the explorer's hazard probe lives here too, because it asks the
 * same question one step earlier. */
#ifndef TDPFAST_CHECKER_H
#define TDPFAST_CHECKER_H
#include "spte.h"

struct tdp_vm;
struct vcpu;

void vm_report(struct tdp_vm *vm, int kind, struct vcpu *v, u64 gpa, u64 tag, u64 stale_pfn,
	       u64 expected_pfn, int access, int level, int frame_state, u64 batch_index);
/* A translation to pfn (page size `level`) was used for this access: 1 if it was
 * reported (use after free, stale write, lost dirty bit), else 0. */
int checker_check_translation(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 pfn,
			      int level, u64 tag, u64 batch_index);
/* A paging-structure-cache entry (next table table_pfn, filled at frame generation
 * gen, for entries of `level`) starts the walk: true if it was reported stale. */
bool checker_check_psc(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 table_pfn,
		       u32 gen, int level, u64 tag, u64 batch_index);
/* The access's fault kept retrying. */
void checker_report_livelock(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, u64 batch_index);
/* For the explorer: does the vCPU's current root still give this cached translation? */
void checker_probe_hazard(struct tdp_vm *vm, struct vcpu *v, u64 gfn, u64 pfn, int cached_level);

#endif
