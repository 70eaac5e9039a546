/* event.c — the event log: every top-level operation that succeeded, with its
 * arguments, in the order it ran (the public event_log() format: a code from
 * events.def and five words), the store behind access batches, the replay that
 * applies a log to a fresh VM through the same public calls, and the internal
 * trace (flushes, zaps, fills) kept when the VM traces. */
#include <stdlib.h>
#include <string.h>
#include "vm.h"

static const char *const event_names[EV_COUNT] = {
#define EVENT(code, name, nargs) [EV_##code] = name,
#include "events.def"
#undef EVENT
};

static const signed char event_nargs[EV_COUNT] = {
	[EV_NONE] = -1,
#define EVENT(code, name, nargs) [EV_##code] = nargs,
#include "events.def"
#undef EVENT
};

/* An access-batch record in the store: the gpa, then the access kind. */
_Static_assert(sizeof(u64) + sizeof(u8) == 9, "an access-batch record is 9 bytes");
/* The event_log() record: a one-byte code and five words. */
_Static_assert(EV_COUNT <= 256 && sizeof(((struct tdp_event *)0)->a) == 5 * sizeof(u64),
	       "an event code fits the log's one byte; an event has five words");
/* The codes are a public format (event_log()): they never move. */
_Static_assert(EV_MEMSLOT_ADD == 1 && EV_ZAP_RANGE == 16 && EV_ACCESS_BATCH == 29 && EV_OP_STEP == 38 &&
	       EV_GUEST_INVPCID == 48 && EV_NESTED_EXIT == 50 && EV_GUEST_PV_FLUSH == 51 && EV_NESTED_INVVPID == 52 && EV_COUNT == 53, "event codes are the public event_log() format and never change");

int tdp_event_kinds(void) { return EV_COUNT; }
const char *tdp_event_name(int code) { return code > 0 && code < EV_COUNT ? event_names[code] : NULL; }
int tdp_event_nargs(int code) { return code > 0 && code < EV_COUNT ? event_nargs[code] : -1; }

void vm_trace_rec(struct tdp_vm *vm, u32 kind, u32 level, u64 a, u64 b, u64 c)
{
	if (vm->ntr == vm->tr_cap) {
		size_t ncap = vm->tr_cap ? vm->tr_cap * 2 : 1024;
		struct tdp_trace_rec *n = realloc(vm->tr, ncap * sizeof(*n));
		if (!n) {
			vm_drop_record(vm); /* the model is unaffected; the caller learns it */
			return;
		}
		vm->tr = n;
		vm->tr_cap = ncap;
	}
	vm->tr[vm->ntr++] = (struct tdp_trace_rec){kind, level, a, b, c};
}

void vm_log(struct tdp_vm *vm, u32 op, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4)
{
	vm->nlogged++; /* counted when not recording too: a violation's event index */
	if (!vm->cfg.record)
		return;
	if (vm->nev == vm->ev_cap) {
		size_t ncap = vm->ev_cap ? vm->ev_cap * 2 : 256;
		struct tdp_event *n = realloc(vm->ev, ncap * sizeof(*n));
		if (!n) {
			vm_drop_record(vm);
			return;
		}
		vm->ev = n;
		vm->ev_cap = ncap;
	}
	vm->ev[vm->nev++] = (struct tdp_event){.op = op, .a = {a0, a1, a2, a3, a4}};
}

int vm_log_reserve_batch(struct tdp_vm *vm, size_t n)
{
	if (vm->nblob + n <= vm->blob_cap)
		return 0;
	size_t ncap = vm->blob_cap ? vm->blob_cap : 4096;
	while (ncap < vm->nblob + n)
		ncap *= 2;
	u8 *b = realloc(vm->blob, ncap);
	if (!b)
		return -1;
	vm->blob = b;
	vm->blob_cap = ncap;
	return 0;
}

void vm_log_access_batch(struct tdp_vm *vm, int vcpu, const u64 *gpas, const u8 *accesses,
			 int default_access, size_t n)
{
	/* One event for the batch; its accesses are in the store (when recording). */
	size_t at = vm->nblob;
	if (vm->cfg.record) {
		for (size_t k = 0; k < n; k++) {
			memcpy(vm->blob + at + k * 9, &gpas[k], 8);
			vm->blob[at + k * 9 + 8] = (u8)(accesses ? accesses[k] : default_access);
		}
		vm->nblob = at + n * 9;
	}
	vm_log(vm, EV_ACCESS_BATCH, (u64)vcpu, at, n, 0, 0);
}

size_t tdp_event_count(tdp_vm *vm) { return vm->nev; }

size_t tdp_events(tdp_vm *vm, struct tdp_event *out, size_t start, size_t max)
{
	if (start >= vm->nev)
		return 0;
	size_t n = vm->nev - start < max ? vm->nev - start : max;
	memcpy(out, vm->ev + start, n * sizeof(*out));
	return n;
}

size_t tdp_trace_count(tdp_vm *vm) { return vm->ntr; }

size_t tdp_trace(tdp_vm *vm, struct tdp_trace_rec *out, size_t start, size_t max)
{
	if (start >= vm->ntr)
		return 0;
	size_t n = vm->ntr - start < max ? vm->ntr - start : max;
	memcpy(out, vm->tr + start, n * sizeof(*out));
	return n;
}

int tdp_event_batch(tdp_vm *vm, size_t event, uint64_t *gpas, uint8_t *accesses, size_t max)
{
	if (event >= vm->nev || vm->ev[event].op != EV_ACCESS_BATCH)
		return vm_err(vm, TDP_EINVAL, "event %zu is not an access batch", event);
	size_t at = vm->ev[event].a[1], n = vm->ev[event].a[2];
	for (size_t k = 0; k < n && k < max; k++) {
		memcpy(&gpas[k], vm->blob + at + k * 9, 8);
		accesses[k] = vm->blob[at + k * 9 + 8];
	}
	return 0;
}

/* ------------------------------------------------------------------ replay */

/* ------------------------------------------------------------------ replay
 * One function per event (events.def generates the dispatch, so an event without
 * its replay does not compile): the public call the event was logged by, with the
 * logged arguments. Ids of stepped operations are translated through the map from
 * the original run's ids to the replay's. */

struct replay_ids {
	u32 *map;
	u32 n;
};

#define REPLAY(code) \
	static int replay_##code(tdp_vm *vm, __attribute__((unused)) const u64 *a, \
				 __attribute__((unused)) struct replay_ids *ids)

REPLAY(MEMSLOT_ADD) { int id; return tdp_memslot_add(vm, a[0], a[1], (u32)a[2], (int)a[3], &id); }
REPLAY(MEMSLOT_DELETE) { return tdp_memslot_delete(vm, (int)a[0]); }
REPLAY(HOST_UNMAP) { return tdp_host_unmap(vm, a[0], a[1]); }
REPLAY(HOST_MIGRATE) { u64 pfn; return tdp_host_migrate(vm, a[0], &pfn); }
REPLAY(HOST_AGE) { int young; return tdp_host_age(vm, a[0], a[1], &young); }
REPLAY(DIRTY_LOG_ENABLE) { return tdp_dirty_log_enable(vm, (int)a[0], (int)a[1]); }
REPLAY(DIRTY_LOG_GET)
{
	int r = TDP_ENOENT;
	u64 n;
	for (int i = 0; i < vm->nslots; i++)
		if (vm->slots[i].used && vm->slots[i].id == (int)a[0]) {
			size_t words = (vm->slots[i].npages + 63) / 64;
			u64 *b = calloc(words, sizeof(u64));
			if (!b)
				return TDP_ENOMEM;
			r = tdp_dirty_log_get(vm, (int)a[0], b, words, &n);
			free(b);
		}
	return r;
}
REPLAY(WRITE_PROTECT_GFN) { return tdp_write_protect_gfn(vm, a[0], (int)a[1]); }
REPLAY(ALLOC_ROOT) { u32 rid; return tdp_mmu_alloc_root(vm, (int)a[0], (int)a[1], &rid); }
REPLAY(PUT_ROOT) { return tdp_mmu_put_root(vm, (u32)a[0]); }
REPLAY(INVALIDATE_ALL) { return tdp_mmu_invalidate_all_roots(vm); }
REPLAY(ZAP_INVALIDATED) { return tdp_mmu_zap_invalidated_roots(vm); }
REPLAY(ZAP_ALL_FAST) { return tdp_mmu_zap_all_fast(vm); }
REPLAY(MAP) { int flush; return tdp_mmu_map(vm, (u32)a[0], a[1], (int)a[2], &flush); }
REPLAY(MAP_RANGE) { u64 n; return tdp_mmu_map_range(vm, (u32)a[0], a[1], a[2], (int)a[3], &n); }
REPLAY(ZAP_RANGE) { int flush; return tdp_mmu_zap_gfn_range(vm, a[0], a[1], (int)a[2], &flush); }
REPLAY(ZAP_ROOT) { return tdp_mmu_zap_root(vm, (u32)a[0], (int)a[1]); }
REPLAY(ZAP_SP) { int flush; return tdp_mmu_zap_sp(vm, (u32)a[0], a[1], (int)a[2], &flush); }
REPLAY(WRPROT) { int flush; return tdp_mmu_wrprot_range(vm, a[0], a[1], &flush); }
REPLAY(CLEAR_DIRTY) { int flush; return tdp_mmu_clear_dirty_range(vm, a[0], a[1], &flush); }
REPLAY(AGE) { int young; return tdp_mmu_age_range(vm, a[0], a[1], &young); }
REPLAY(SPLIT) { return tdp_mmu_split_huge_pages(vm, a[0], a[1], (int)a[2]); }
REPLAY(RECOVER) { int flush; return tdp_mmu_recover_huge_pages(vm, a[0], a[1], &flush); }
REPLAY(NX_RECOVER) { int zapped; return tdp_mmu_recover_nx_huge_pages(vm, (int)a[0], &zapped); }
REPLAY(VCPU_RUN) { return tdp_vcpu_run(vm, (int)a[0], (int)a[1]); }
REPLAY(VCPU_EXIT) { return tdp_vcpu_exit(vm, (int)a[0]); }
REPLAY(VCPU_REQUEST) { return tdp_vcpu_request(vm, (int)a[0], (u32)a[1]); }
REPLAY(ACCESS) { struct tdp_access_result out; return tdp_access(vm, (int)a[0], a[1], (int)a[2], &out); }
REPLAY(ACCESS_BATCH)
{
	/* Its accesses live in the original VM's batch store: replay with the
	 * Python replay, which reads them through tdp_event_batch(). */
	return vm_err(vm, TDP_EINVAL, "event %u cannot be replayed here", (unsigned)EV_ACCESS_BATCH);
}
REPLAY(FLUSH_REMOTE) { return tdp_flush_remote_tlbs(vm); }
REPLAY(FLUSH_RANGE) { return tdp_flush_remote_tlbs_range(vm, a[0], a[1]); }
REPLAY(INVEPT) { return tdp_invept(vm, (int)a[0], (int)a[1], a[2]); }
REPLAY(INVVPID) { return tdp_invvpid(vm, (int)a[0], (int)a[1], (u32)a[2], a[3]); }
REPLAY(TLB_CONTROL) { return tdp_svm_set_tlb_control(vm, (int)a[0], (int)a[1]); }
REPLAY(SYNC_RCU) { return tdp_synchronize_rcu(vm); }
REPLAY(TLB_JUNK) { return tdp_tlb_fill_junk(vm, (int)a[0], (u32)a[1], a[2]); }
REPLAY(GUEST_PT_POOL) { return tdp_guest_set_pt_pool(vm, a[0], a[1]); }
REPLAY(GUEST_NEW_TABLE) { u64 gfn; return tdp_guest_new_table(vm, &gfn); }
REPLAY(GUEST_MAP) { return tdp_guest_map(vm, a[0], (int)a[1], a[2], a[3], (int)(a[4] & 0xff), (u32)(a[4] >> 8)); }
REPLAY(GUEST_UNMAP) { int was; return tdp_guest_unmap(vm, a[0], (int)a[1], a[2], &was); }
REPLAY(GUEST_WRITE_PTE) { return tdp_guest_write_pte(vm, a[0], (int)a[1], a[2]); }
REPLAY(GUEST_SET_PAGING) { return tdp_guest_set_paging(vm, (int)a[0], (int)a[1], (int)a[2]); }
REPLAY(GUEST_LOAD_CR3) { return tdp_guest_load_cr3(vm, (int)a[0], a[1]); }
REPLAY(GUEST_ACCESS)
{
	struct tdp_guest_access_result out;
	return tdp_guest_access(vm, (int)a[0], a[1], (int)a[2], &out);
}
REPLAY(GUEST_INVLPG) { return tdp_guest_invlpg(vm, (int)a[0], a[1]); }
REPLAY(GUEST_INVPCID) { return tdp_guest_invpcid(vm, (int)a[0], (int)a[1], (u32)a[2], a[3]); }
REPLAY(NESTED_ENTER) { return tdp_nested_enter(vm, (int)a[0]); }
REPLAY(NESTED_EXIT) { return tdp_nested_exit(vm, (int)a[0]); }
REPLAY(GUEST_PV_FLUSH) { return tdp_guest_pv_flush(vm, (int)a[0]); }
REPLAY(NESTED_INVVPID) { return tdp_nested_invvpid(vm, (int)a[0], (int)a[1], (u32)a[2], a[3]); }
REPLAY(OP_START)
{
	u32 orig = (u32)(a[4] >> 32), nid;
	int r = tdp_op_start(vm, (int)a[0], a[1], a[2], a[3], (int)(u32)a[4], &nid);
	if (!r && orig < ids->n)
		ids->map[orig] = nid;
	return r;
}
REPLAY(OP_STEP)
{
	u32 orig = (u32)a[0];
	int done, res;
	if (orig >= ids->n || !ids->map[orig])
		return vm_err(vm, TDP_ENOENT, "operation %u was not started in this replay", orig);
	return tdp_op_step(vm, ids->map[orig], &done, &res);
}

static int replay_one(tdp_vm *vm, const struct tdp_event *e, struct replay_ids *ids)
{
	switch (e->op) {
#define EVENT(code, name, nargs) \
	case EV_##code: return replay_##code(vm, e->a, ids);
#include "events.def"
#undef EVENT
	default:
		return vm_err(vm, TDP_EINVAL, "event %u cannot be replayed here", e->op);
	}
}

int tdp_replay(tdp_vm *vm, const struct tdp_event *ev, size_t n, int flags, size_t *applied)
{
	u32 nmap = 1;
	*applied = 0;
	for (size_t i = 0; i < n; i++)
		if (ev[i].op == EV_OP_START && (u32)(ev[i].a[4] >> 32) + 1 > nmap)
			nmap = (u32)(ev[i].a[4] >> 32) + 1;
	struct replay_ids ids = {calloc(nmap, sizeof(u32)), nmap};
	if (!ids.map)
		return vm_err(vm, TDP_ENOMEM, "out of host memory");
	size_t ok = 0;
	for (size_t i = 0; i < n; i++) {
		vm->err[0] = 0;
		int r = replay_one(vm, &ev[i], &ids);
		if (r == 0) {
			ok++;
		} else if (!(flags & TDP_REPLAY_SKIP_FAILING)) {
			/* Strict: the sequence does not replay; say which event and why. */
			char why[sizeof(vm->err)];
			memcpy(why, vm->err, sizeof(why));
			free(ids.map);
			*applied = ok;
			return vm_err(vm, r, "events[%zu] %s does not replay: %s (the %zu event(s) before it were applied)",
				      i, tdp_event_name((int)ev[i].op) ? tdp_event_name((int)ev[i].op) : "?",
				      why[0] ? why : "it failed", ok);
		}
		if ((flags & TDP_REPLAY_STOP_AT_VIOLATION) && vm->nviol)
			break;
	}
	free(ids.map);
	*applied = ok;
	return 0;
}
