/* The state invariants catch a broken engine: each case builds a small VM, then
 * breaks its state the way a bug in the engine would (a frozen SPTE left behind, a
 * leaf counter that slipped, a non-leaf SPTE pointing at the wrong table, a root
 * reference taken and never put, a table allocated and never linked, a fault into
 * an invalidated root), runs one more operation, and checks that exactly the
 * expected violation kind is reported, with its root and gfn, and that the same
 * state without the breakage reports nothing. Built against the engine's internal
 * headers (tests/test_invariants.py compiles and runs it). Exit status 0: all
 * cases behaved. */
#include <stdio.h>
#include <string.h>
#include "vm.h"

enum breakage { NONE, FROZEN, LEAF_COUNT, MALFORMED, REFCOUNT, LEAKED, STALE_FAULT, NCASES };
static const char *const names[] = {"none", "frozen", "leaf_count", "malformed", "refcount", "leaked", "stale_fault"};
static const int want[] = {0, TDP_V_FROZEN_SPTE, TDP_V_LEAF_COUNT, TDP_V_MALFORMED_TABLE, TDP_V_ROOT_REFCOUNT,
			   TDP_V_LEAKED_TABLE, TDP_V_STALE_FAULT_INSTALL};

static int run(int b)
{
	struct tdp_config c;
	struct tdp_tlb_config t;
	struct tdp_policy p;
	struct tdp_costs k;
	char err[256];
	tdp_vm *vm;
	int id, flush, rc = 0;
	u32 rid;

	tdp_default_config(&c);
	tdp_default_policy(&p);
	tdp_default_costs(&k);
	tdp_tlb_preset("adversarial", &t);
	c.invariants = TDP_INV_ALL;
	if (tdp_vm_create(&c, &t, &p, &k, &vm, err, sizeof(err)))
		return fprintf(stderr, "create: %s\n", err), 1;
	if (tdp_memslot_add(vm, 0, 512, 0, 1, &id) || tdp_memslot_add(vm, 1u << 18, 512, 0, 1, &id) ||
	    tdp_mmu_alloc_root(vm, 0, 0, &rid) || tdp_mmu_map(vm, rid, 5, 1, &flush) || tdp_mmu_map(vm, rid, 6, 1, &flush))
		return fprintf(stderr, "setup: %s\n", tdp_errmsg(vm)), 1;
	if (tdp_violation_count(vm))
		return fprintf(stderr, "setup reported a violation\n"), 1;

	struct tdp_root *root = tdp_mmu_find_root(vm, rid);
	u64 *l1 = hostmem_table(&vm->mem, tdp_mmu_find_sp(vm, root, 5, 1));
	u64 *l2 = hostmem_table(&vm->mem, tdp_mmu_find_sp(vm, root, 5, 2));
	u64 saved = 0;
	switch (b) {
	case FROZEN:
		saved = l1[6];
		l1[6] = FROZEN_SPTE;
		break;
	case LEAF_COUNT:
		vm->stats[ST_pages_4k]++;
		break;
	case MALFORMED:
		/* The PDE of gfn 5 now points at the root's own page (wrong level). */
		saved = l2[0];
		l2[0] = make_nonleaf_spte(&vm->masks, hostmem_pfn(&vm->mem, root->frame));
		break;
	case REFCOUNT:
		root->refcount++;
		break;
	case LEAKED:
		if (tdp_mmu_alloc_sp(vm, 1, 0x80, rid, NO_FRAME) == NO_FRAME)
			return fprintf(stderr, "alloc_sp failed\n"), 1;
		break;
	case STALE_FAULT:
		/* What is_page_fault_stale() prevents: the install lands after the
		 * root was invalidated. */
		root->invalid = true;
		checker_check_fault_install(vm, root, 5, 1);
		root->invalid = false;
		break;
	}
	/* One more operation, which changes the tables' structure (new tables for
	 * gfn 2^18), so every invariant is checked at its end. */
	if (tdp_mmu_map(vm, rid, 1u << 18, 1, &flush))
		return fprintf(stderr, "map: %s\n", tdp_errmsg(vm)), 1;
	size_t n = tdp_violation_count(vm);
	struct tdp_violation v[4];
	tdp_violations(vm, v, 4);
	if (b == NONE) {
		if (n)
			rc = (fprintf(stderr, "none: unexpected violation kind %d\n", v[0].kind), 1);
	} else if (n < 1 || v[0].kind != want[b]) {
		/* The first report is the breakage itself; its consequences may follow
		 * (a frozen leaf is no longer counted, a table no longer reached). */
		rc = (fprintf(stderr, "%s: %zu violation(s), first kind %d, want kind %d\n", names[b], n, n ? v[0].kind : 0,
			      want[b]), 1);
	} else if ((b != LEAF_COUNT && v[0].root != rid) ||
		   ((b == FROZEN || b == STALE_FAULT) && v[0].gpa != (b == FROZEN ? 6ull << 12 : 5ull << 12)) ||
		   (b == FROZEN && v[0].spte != FROZEN_SPTE) || (b == LEAF_COUNT && (v[0].level != 1 || v[0].spte != v[0].expected_pfn + 1)) ||
		   v[0].vcpu != -1) {
		rc = (fprintf(stderr, "%s: root %u gpa 0x%llx level %d spte 0x%llx vcpu %d\n", names[b], v[0].root,
			      (unsigned long long)v[0].gpa, v[0].level, (unsigned long long)v[0].spte, v[0].vcpu), 1);
	}
	if (!rc)
		printf("%s: ok (kind %s)\n", names[b], b ? tdp_violation_kind_name(v[0].kind) : "-");
	/* Undo what the engine's own teardown walks. */
	if (b == FROZEN)
		l1[6] = saved;
	if (b == MALFORMED)
		l2[0] = saved;
	if (b == REFCOUNT)
		root->refcount--;
	tdp_vm_destroy(vm);
	return rc;
}

int main(void)
{
	int rc = 0;
	for (int b = NONE; b < NCASES; b++)
		rc |= run(b);
	return rc;
}
