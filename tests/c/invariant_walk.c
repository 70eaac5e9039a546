/* The incremental walk of the tables' invariants gives the full walk's verdicts.
 * Each case runs the explorer on a VM, breaks its state at random the way a buggy
 * engine would (an SPTE frozen, cleared, made a leaf at a table level or pointed
 * at another table, a leaf counter or a root reference that slipped), runs the
 * explorer on, and records every violation. The same case runs with the full walk
 * (the specification), the incremental walk and both cross-checked; the violations
 * (kind, root, gfn, level, SPTE, operation) must be identical, and the cross-check
 * must not have raised an engine warning of its own (the broken state may trip the
 * engine's others, the same in every walk). Built against the engine's internal
 * headers (tests/test_invariant_walk.py compiles and runs it). Exit status 0: all
 * cases agreed. Usage: invariant_walk [cases] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vm.h"

struct outcome {
	size_t n;
	struct tdp_violation v[8];
	u64 ops, warnings;
};

static bool same_violation(const struct tdp_violation *a, const struct tdp_violation *b)
{
	return a->kind == b->kind && a->vcpu == b->vcpu && a->pcpu == b->pcpu && a->gpa == b->gpa && a->tag == b->tag &&
	       a->stale_pfn == b->stale_pfn && a->expected_pfn == b->expected_pfn && a->event == b->event &&
	       a->access == b->access && a->level == b->level && a->frame_state == b->frame_state &&
	       a->batch_index == b->batch_index && a->root == b->root && a->spte == b->spte;
}

static u64 next(u64 *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Break the state once, as chosen by rng (the same choice for every walk). */
static void breakage(tdp_vm *vm, u64 rng)
{
	u32 tables[4096], n = 0;
	for (u32 f = 0; f < vm->mem.nframes && n < 4096; f++)
		if (vm->mem.frames[f].state == FRAME_TABLE)
			tables[n++] = f;
	int what = (int)(next(&rng) % 8);
	if (what == 6) {
		vm->stats[ST_pages_4k + next(&rng) % 3]++;
		return;
	}
	if (what == 7) {
		if (vm->nroots)
			vm->roots[next(&rng) % (u64)vm->nroots].refcount++;
		return;
	}
	if (!n)
		return;
	u32 f = tables[next(&rng) % n];
	u64 *t = hostmem_table(&vm->mem, f); /* a writer notes the table it writes */
	int i = (int)(next(&rng) % 512);
	/* Rather an entry that is present, where one is. */
	for (int k = 0; k < 512 && !is_shadow_present_pte(t[i]); k++)
		i = (i + 1) % 512;
	switch (what) {
	case 0: t[i] = FROZEN_SPTE; break;
	case 1: t[i] = SHADOW_NONPRESENT_VALUE; break;
	case 2: t[i] |= 1ull << 7; break; /* the page-size bit: a leaf where a table was */
	case 3: t[i] = make_nonleaf_spte(&vm->masks, hostmem_pfn(&vm->mem, tables[next(&rng) % n])); break;
	case 4: t[(i + 1) % 512] = t[i]; break; /* the same table linked twice, or a leaf copied */
	default: t[i] ^= 1ull << 1; break;       /* a permission bit: no verdict changes */
	}
}

static int run(u64 seed, int walk, struct outcome *o)
{
	struct tdp_config c;
	struct tdp_tlb_config t;
	struct tdp_policy p;
	struct tdp_costs k;
	char err[256];
	tdp_vm *vm;
	u64 done;

	tdp_default_config(&c);
	tdp_default_policy(&p);
	tdp_default_costs(&k);
	tdp_tlb_preset("adversarial", &t);
	c.nvcpus = 2;
	c.npcpus = 3;
	c.seed = seed;
	c.ad = (int)(seed & 1);
	c.arch = seed & 2 ? TDP_SVM : TDP_VMX;
	c.record = 0;
	c.invariants = TDP_INV_ALL;
	c.invariant_walk = walk;
	if (seed % 5 == 4)
		p.iter_skip_after_yield = 1; /* B9: I1 reports too */
	p.yield_every = 8;
	if (tdp_vm_create(&c, &t, &p, &k, &vm, err, sizeof(err)))
		return fprintf(stderr, "create: %s\n", err), 1;
	memset(o, 0, sizeof(*o));
	u64 rng = seed * 0x9e3779b97f4a7c15ull + 1;
	if (tdp_fuzz(vm, seed, 200 + next(&rng) % 2000, &done))
		return fprintf(stderr, "fuzz: %s\n", tdp_errmsg(vm)), 1;
	o->ops = done;
	if (!tdp_violation_count(vm)) {
		breakage(vm, next(&rng));
		if (tdp_fuzz(vm, seed + 1, 300, &done))
			return fprintf(stderr, "fuzz: %s\n", tdp_errmsg(vm)), 1;
		o->ops += done;
	}
	o->n = tdp_violations(vm, o->v, 8);
	o->warnings = vm->warnings;
	if (vm->warnings && getenv("IW_DEBUG"))
		fprintf(stderr, "warning: %s\n", vm->warning);
	/* What the engine's teardown would trip over is its own business: the
	 * breakage stays, and destroy frees the frames without walking them. */
	tdp_vm_destroy(vm);
	return 0;
}

int main(int argc, char **argv)
{
	int cases = argc > 1 ? atoi(argv[1]) : 200, bad = 0, reported = 0, kinds[TDP_V_LEAKED_TABLE + 1] = {0};

	for (int s = 0; s < cases; s++) {
		struct outcome full, inc, both;
		if (run((u64)s, TDP_INV_WALK_FULL, &full) || run((u64)s, TDP_INV_WALK_INCREMENTAL, &inc) ||
		    run((u64)s, TDP_INV_WALK_CROSSCHECK, &both))
			return 2;
		bool same = full.n == inc.n && full.n == both.n && full.ops == inc.ops && full.ops == both.ops;
		for (size_t i = 0; same && i < full.n; i++)
			same = same_violation(&full.v[i], &inc.v[i]) && same_violation(&full.v[i], &both.v[i]);
		/* The broken state may trip the engine's own warnings; the cross-check adds none. */
		if (!same || both.warnings != full.warnings || inc.warnings != full.warnings) {
			fprintf(stderr, "case %d: full %zu violation(s) (first kind %d), incremental %zu (%d), crosscheck %zu "
				"(%d), crosscheck warnings %llu\n", s, full.n, full.n ? full.v[0].kind : 0, inc.n,
				inc.n ? inc.v[0].kind : 0, both.n, both.n ? both.v[0].kind : 0,
				(unsigned long long)both.warnings);
			bad++;
		}
		reported += full.n > 0;
		if (full.n && full.v[0].kind >= 0 && full.v[0].kind <= TDP_V_LEAKED_TABLE)
			kinds[full.v[0].kind]++;
	}
	printf("%d cases, %d with violations, %d disagreements; first violation by kind:", cases, reported, bad);
	for (int k = 1; k <= TDP_V_LEAKED_TABLE; k++)
		printf(" %s %d", tdp_violation_kind_name(k), kinds[k]);
	printf("\n");
	return bad != 0;
}
