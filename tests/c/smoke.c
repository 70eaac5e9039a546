/* A C-only smoke run of the engine for sanitizers and valgrind: VMs of every shape,
 * the random explorer under KVM's and buggy policies, stepped operations left in
 * flight, memory images walked, everything destroyed. Exit status 0 when all calls
 * behaved; memory errors and leaks are the tools' to report. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tdpfast.h"

static int fail(const char *what)
{
	fprintf(stderr, "smoke: %s\n", what);
	return 1;
}

static int run(int arch, int levels, int tlb_preset, int buggy, unsigned long long seed, unsigned long long ops)
{
	static const char *presets[] = {"adversarial", "skylake", "zen3"};
	struct tdp_config c;
	struct tdp_tlb_config t;
	struct tdp_policy p;
	struct tdp_costs k;
	char err[256];
	tdp_vm *vm;
	uint64_t n;
	int rc = 0;

	tdp_default_config(&c);
	tdp_default_policy(&p);
	tdp_default_costs(&k);
	tdp_tlb_preset(presets[tlb_preset], &t);
	c.arch = arch;
	c.levels = levels;
	c.maxphyaddr = levels == 5 ? 52 : 46;
	c.nvcpus = 2;
	c.npcpus = 3;
	c.seed = seed;
	c.ad = (int)(seed & 1);
	c.trace = (int)(seed % 3 == 0);
	c.invariants = seed % 2 ? TDP_INV_ALL : 0; /* the state invariants under the sanitizers too */
	if (buggy) {
		p.flush_on_migrate = 0;
		p.yield_every = 5;
		p.iter_skip_after_yield = 1;
		p.nx_huge_pages = 1;
	}
	if (tdp_vm_create(&c, &t, &p, &k, &vm, err, sizeof(err)))
		return fail(err);
	if (tdp_fuzz(vm, seed, ops, &n)) {
		tdp_vm_destroy(vm);
		return fail("fuzz");
	}
	/* Export a root and walk it as a memory image. */
	uint32_t root = tdp_mmu_newest_root(vm);
	if (root) {
		size_t cnt;
		uint64_t rp;
		tdp_mmu_tables(vm, root, NULL, NULL, 0, &cnt);
		uint64_t *addrs = malloc(cnt * sizeof(uint64_t) + 8);
		uint8_t *data = malloc(cnt * 4096 + 1);
		tdp_mmu_tables(vm, root, addrs, data, cnt, &cnt);
		/* tables come out in tree order; the image walker wants them sorted */
		for (size_t i = 1; i < cnt; i++)
			for (size_t j = i; j > 0 && addrs[j - 1] > addrs[j]; j--) {
				uint64_t a = addrs[j]; addrs[j] = addrs[j - 1]; addrs[j - 1] = a;
				uint8_t tmp[4096];
				memcpy(tmp, data + j * 4096, 4096);
				memcpy(data + j * 4096, data + (j - 1) * 4096, 4096);
				memcpy(data + (j - 1) * 4096, tmp, 4096);
			}
		tdp_mmu_root_pointer(vm, root, &rp);
		struct tdp_hw_params hp = {.fmt = arch, .levels = levels, .ad = 1, .maxphyaddr = c.maxphyaddr, .exec_only = 1};
		struct tdp_walk_result w;
		for (uint64_t g = 0; g < 2048; g += 37)
			tdp_hw_walk(addrs, data, cnt, rp, g << 12, (int)(g % 3), &hp, &w, err, sizeof(err));
		free(addrs);
		free(data);
	}
	/* Leave a stepped operation in flight on purpose. */
	uint32_t op;
	tdp_op_start(vm, TDP_OP_ZAP_GFN_RANGE, 0, 2048, 0, 3, &op);
	size_t nev = tdp_event_count(vm);
	struct tdp_event *ev = calloc(nev + 1, sizeof(*ev));
	tdp_events(vm, ev, 0, nev);
	tdp_vm *again;
	if (!tdp_vm_create(&c, &t, &p, &k, &again, err, sizeof(err))) {
		size_t applied;
		tdp_replay(again, ev, nev, 1, &applied);
		if (tdp_warn_count(again) || tdp_dropped_records(again))
			rc = fail(tdp_warn_count(again) ? tdp_warn_message(again) : "records dropped (replay)");
		tdp_vm_destroy(again);
	}
	free(ev);
	/* No state the model must never reach, and no record lost. */
	if (tdp_warn_count(vm) || tdp_dropped_records(vm))
		rc = fail(tdp_warn_count(vm) ? tdp_warn_message(vm) : "records dropped");
	tdp_vm_destroy(vm);
	return rc;
}

/* The public vocabulary: every event code has a name and an arity, every enum value
 * a name, and nothing outside the enums has one. */
static int vocabulary(void)
{
	int kinds = tdp_event_kinds();
	if (kinds < 2 || tdp_event_name(0) || tdp_event_name(kinds) || tdp_event_nargs(0) != -1 ||
	    tdp_event_nargs(kinds) != -1)
		return fail("event vocabulary: code 0 and codes past the end must be unnamed");
	for (int i = 1; i < kinds; i++)
		if (!tdp_event_name(i) || tdp_event_nargs(i) < 0 || tdp_event_nargs(i) > 5)
			return fail("event vocabulary: a code without a name or with an arity outside 0..5");
	for (int e = TDP_ELIVELOCK; e <= 0; e++)
		if (!tdp_error_name(e))
			return fail("an error code without a name");
	if (tdp_error_name(TDP_ELIVELOCK - 1) || tdp_error_name(1))
		return fail("a name for an error code that does not exist");
	for (uint32_t bit = 1; bit <= TDP_REQ_ALL; bit <<= 1)
		if (!tdp_request_name(bit))
			return fail("a request bit without a name");
	if (tdp_request_name(0) || tdp_request_name(3) || tdp_request_name((uint32_t)TDP_REQ_ALL + 1))
		return fail("a name for something that is not one request bit");
	if (!tdp_op_kind_name(TDP_OP_ZAP_GFN_RANGE) || !tdp_op_kind_name(TDP_OP_NX_RECOVER) || tdp_op_kind_name(0) ||
	    tdp_op_kind_name(TDP_OP_LAST + 1) || !tdp_op_kind_name(TDP_OP_PAGE_FAULT) || !tdp_violation_kind_name(TDP_V_LIVELOCK) ||
	    tdp_violation_kind_name(0) || !tdp_frame_state_name(TDP_FRAME_CURRENT) ||
	    tdp_frame_state_name(TDP_FRAME_CURRENT + 1) || !tdp_access_outcome_name(TDP_OUT_BLOCKED) ||
	    tdp_access_outcome_name(-1) || !tdp_trace_kind_name(TDP_TR_NEW_ASID) || tdp_trace_kind_name(0) ||
	    !tdp_vcpu_mode_name(TDP_EXITING_GUEST) || !tdp_access_name(TDP_ACC_EXEC_USER) || tdp_access_name(4) ||
	    !tdp_arch_name(TDP_SVM) || tdp_arch_name(2) ||
	    strcmp(tdp_policy_value_name("removed_pt_flush", TDP_REMOVED_PT_FLUSH_LAST_CHILD), "last_child") ||
	    tdp_policy_value_name("removed_pt_flush", 3) || tdp_policy_value_name("no_such_switch", 0) ||
	    tdp_policy_value_name(NULL, 0))
		return fail("enum names");
	for (int i = 1; i <= tdp_flush_site_count(); i++)
		if (!tdp_flush_site_name(i) || !tdp_flush_site_arch(i) || !tdp_flush_site_where(i) || !tdp_flush_site_what(i))
			return fail("a flush site without a name");
	if (tdp_flush_site_count() < 1 || tdp_flush_site_name(0) || tdp_flush_site_name(tdp_flush_site_count() + 1))
		return fail("a name for a flush site that does not exist");
	return 0;
}

int main(int argc, char **argv)
{
	unsigned long long ops = argc > 1 ? strtoull(argv[1], NULL, 0) : 20000;
	int rc = vocabulary();
	for (unsigned long long seed = 0; seed < 6; seed++)
		for (int arch = 0; arch < 2; arch++)
			rc |= run(arch, 4 + (int)(seed % 2), (int)(seed % 3), (int)(seed / 3), seed, ops);
	printf("smoke: %s\n", rc ? "FAILED" : "ok");
	return rc;
}
