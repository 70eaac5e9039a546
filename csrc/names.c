/* names.c — the names of the public enums of tdpfast.h, for the bindings: Python
 * reads every name (and, through cffi, every value) from here instead of retyping
 * C's numbers. Each table is checked against its enum at compile time. */
#include <string.h>
#include "vm.h"

#define NAMES_LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const char *name_at(const char *const *names, int n, int i)
{
	return i >= 0 && i < n ? names[i] : NULL;
}

static const char *const error_names[] = {
	[0] = "ok",
	[-TDP_EINVAL] = "invalid_argument",
	[-TDP_ENOENT] = "not_found",
	[-TDP_ENOMEM] = "no_memory",
	[-TDP_ESTATE] = "invalid_state",
	[-TDP_EIMAGE] = "malformed_image",
	[-TDP_EMISSING] = "missing_page",
	[-TDP_ELIVELOCK] = "livelock",
};
_Static_assert(NAMES_LEN(error_names) == 1 - TDP_ELIVELOCK, "a name for every enum tdp_err code");

const char *tdp_error_name(int code) { return code > 0 ? NULL : name_at(error_names, NAMES_LEN(error_names), -code); }

static const char *const arch_names[] = {[TDP_VMX] = "vmx", [TDP_SVM] = "svm"};
const char *tdp_arch_name(int arch) { return name_at(arch_names, NAMES_LEN(arch_names), arch); }

static const char *const access_names[] = {
	[TDP_ACC_READ] = "r", [TDP_ACC_WRITE] = "w", [TDP_ACC_EXEC] = "x", [TDP_ACC_EXEC_USER] = "xu"};
_Static_assert(NAMES_LEN(access_names) == TDP_ACC_EXEC_USER + 1, "a name for every access");
const char *tdp_access_name(int access) { return name_at(access_names, NAMES_LEN(access_names), access); }

static const char *const outcome_names[] = {
	[TDP_OUT_OK] = "ok", [TDP_OUT_MMIO] = "mmio", [TDP_OUT_LIVELOCK] = "livelock", [TDP_OUT_BLOCKED] = "blocked",
	[TDP_OUT_GUEST_PF] = "guest_page_fault"};
_Static_assert(NAMES_LEN(outcome_names) == TDP_OUT_GUEST_PF + 1, "a name for every access outcome");
const char *tdp_access_outcome_name(int outcome) { return name_at(outcome_names, NAMES_LEN(outcome_names), outcome); }

static const char *const violation_names[] = {
	[TDP_V_USE_AFTER_FREE] = "use_after_free", [TDP_V_STALE_PAGE_TABLE] = "stale_page_table",
	[TDP_V_LOST_DIRTY] = "lost_dirty", [TDP_V_STALE_WRITE] = "stale_write", [TDP_V_LIVELOCK] = "livelock",
	[TDP_V_NOTIFIER_RANGE_MAPPED] = "notifier_range_mapped", [TDP_V_DELETED_SLOT_MAPPED] = "deleted_slot_mapped",
	[TDP_V_STALE_FAULT_INSTALL] = "stale_fault_install", [TDP_V_MALFORMED_TABLE] = "malformed_table",
	[TDP_V_FROZEN_SPTE] = "frozen_spte", [TDP_V_LEAF_COUNT] = "leaf_count", [TDP_V_ROOT_REFCOUNT] = "root_refcount",
	[TDP_V_LEAKED_TABLE] = "leaked_table", [TDP_V_UNLOGGED_WRITABLE] = "unlogged_writable",
	[TDP_V_TLB_TAG_ALIAS] = "tlb_tag_alias", [TDP_V_STALE_GUEST_TRANSLATION] = "stale_guest_translation"};
_Static_assert(NAMES_LEN(violation_names) == TDP_V_STALE_GUEST_TRANSLATION + 1, "a name for every violation kind");
const char *tdp_violation_kind_name(int kind) { return kind < 1 ? NULL : name_at(violation_names, NAMES_LEN(violation_names), kind); }

/* Indexed by bit number. */
static const char *const invariant_names[] = {"notifier", "memslot", "tables", "roots", "dirty_log"};
_Static_assert(1 << NAMES_LEN(invariant_names) == TDP_INV_ALL + 1, "a name for every invariant bit");
const char *tdp_invariant_name(int bit)
{
	for (int i = 0; i < NAMES_LEN(invariant_names); i++)
		if (bit == 1 << i)
			return invariant_names[i];
	return NULL;
}

static const char *const frame_state_names[] = {
	[TDP_FRAME_UNUSED] = "unused", [TDP_FRAME_FREE] = "free", [TDP_FRAME_TABLE] = "table",
	[TDP_FRAME_GUEST] = "guest", [TDP_FRAME_RCU] = "rcu", [TDP_FRAME_CURRENT] = "current"};
_Static_assert(NAMES_LEN(frame_state_names) == TDP_FRAME_CURRENT + 1, "a name for every frame state");
const char *tdp_frame_state_name(int state) { return name_at(frame_state_names, NAMES_LEN(frame_state_names), state); }

static const char *const vcpu_mode_names[] = {
	[TDP_OUTSIDE_GUEST] = "outside_guest", [TDP_IN_GUEST] = "in_guest", [TDP_EXITING_GUEST] = "exiting_guest"};
_Static_assert(NAMES_LEN(vcpu_mode_names) == TDP_EXITING_GUEST + 1, "a name for every vCPU mode");
const char *tdp_vcpu_mode_name(int mode) { return name_at(vcpu_mode_names, NAMES_LEN(vcpu_mode_names), mode); }

/* Indexed by bit number. */
static const char *const request_names[] = {
	"tlb_flush", "tlb_flush_current", "tlb_flush_guest", "mmu_free_obsolete_roots", "load_mmu_pgd"};
_Static_assert(TDP_REQ_TLB_FLUSH == 1 << 0 && TDP_REQ_TLB_FLUSH_CURRENT == 1 << 1 && TDP_REQ_TLB_FLUSH_GUEST == 1 << 2 &&
	       TDP_REQ_MMU_FREE_OBSOLETE_ROOTS == 1 << 3 && TDP_REQ_LOAD_MMU_PGD == 1 << 4 &&
	       TDP_REQ_ALL == (1 << NAMES_LEN(request_names)) - 1, "request names are by bit number");

const char *tdp_request_name(uint32_t bit)
{
	if (!bit || (bit & (bit - 1)) || (bit & ~(uint32_t)TDP_REQ_ALL))
		return NULL;
	return request_names[__builtin_ctz(bit)];
}

static const char *const op_kind_names[] = {
	[TDP_OP_ZAP_GFN_RANGE] = "kvm_zap_gfn_range", [TDP_OP_HOST_UNMAP] = "host_unmap",
	[TDP_OP_ZAP_INVALIDATED_ROOTS] = "zap_invalidated_roots", [TDP_OP_DELETE_MEMSLOT] = "delete_memslot",
	[TDP_OP_WRPROT] = "write_protect_range", [TDP_OP_CLEAR_DIRTY] = "clear_dirty_range",
	[TDP_OP_SPLIT] = "split_huge_pages", [TDP_OP_RECOVER_HUGE] = "recover_huge_pages",
	[TDP_OP_NX_RECOVER] = "recover_nx_huge_pages", [TDP_OP_PAGE_FAULT] = "page_fault"};
_Static_assert(NAMES_LEN(op_kind_names) == TDP_OP_LAST + 1, "a name for every stepped operation");
const char *tdp_op_kind_name(int kind) { return kind < 1 ? NULL : name_at(op_kind_names, NAMES_LEN(op_kind_names), kind); }

static const char *const trace_kind_names[] = {
	[TDP_TR_SPTE_CHANGED] = "spte_changed", [TDP_TR_REMOTE_FLUSH] = "remote_flush",
	[TDP_TR_RANGE_FLUSH] = "range_flush", [TDP_TR_VENDOR_FLUSH] = "vendor_flush",
	[TDP_TR_ROOT_ALLOC] = "root_alloc", [TDP_TR_ROOT_PUT] = "root_put", [TDP_TR_ROOT_FREE] = "root_free",
	[TDP_TR_FAULT] = "fault", [TDP_TR_YIELD] = "yield", [TDP_TR_IPI] = "ipi", [TDP_TR_NEW_ASID] = "new_asid"};
_Static_assert(NAMES_LEN(trace_kind_names) == TDP_TR_NEW_ASID + 1, "a name for every trace kind");
const char *tdp_trace_kind_name(int kind) { return kind < 1 ? NULL : name_at(trace_kind_names, NAMES_LEN(trace_kind_names), kind); }

static const char *const root_lifetime_names[] = {
	[TDP_ROOT_PRESERVE] = "preserve", [TDP_ROOT_ZAP_ON_LAST_PUT] = "zap_on_last_put"};
static const char *const dirty_log_enable_flush_names[] = {
	[TDP_DIRTY_LOG_FLUSH_ALWAYS] = "always", [TDP_DIRTY_LOG_FLUSH_IF_CHANGED] = "if_changed"};
static const char *const removed_pt_flush_names[] = {
	[TDP_REMOVED_PT_FLUSH_NONE] = "none", [TDP_REMOVED_PT_FLUSH_TABLE] = "table",
	[TDP_REMOVED_PT_FLUSH_LAST_CHILD] = "last_child"};
static const char *const huge_recovery_names[] = {
	[TDP_HUGE_RECOVERY_RECOVER] = "recover", [TDP_HUGE_RECOVERY_ZAP_COLLAPSIBLE] = "zap_collapsible"};

static const char *const invept_type_names[] = {
	[TDP_INVEPT_SINGLE_CONTEXT] = "single", [TDP_INVEPT_GLOBAL] = "global"};
const char *tdp_invept_type_name(int type)
{
	return type == 0 ? NULL : name_at(invept_type_names, NAMES_LEN(invept_type_names), type);
}

static const char *const invvpid_type_names[] = {
	[TDP_INVVPID_INDIVIDUAL_ADDRESS] = "individual", [TDP_INVVPID_SINGLE_CONTEXT] = "single",
	[TDP_INVVPID_ALL_CONTEXT] = "all",
	[TDP_INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS] = "single_retaining_globals"};
_Static_assert(NAMES_LEN(invvpid_type_names) == TDP_INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS + 1,
	       "a name for every INVVPID type");
const char *tdp_invvpid_type_name(int type) { return name_at(invvpid_type_names, NAMES_LEN(invvpid_type_names), type); }

static const char *const walk_status_names[] = {
	[TDP_WALK_OK] = "ok", [TDP_WALK_VIOLATION] = "violation", [TDP_WALK_MISCONFIG] = "misconfig",
	[TDP_WALK_NPF] = "npf"};
_Static_assert(NAMES_LEN(walk_status_names) == TDP_WALK_NPF + 1, "a name for every walk status");
const char *tdp_walk_status_name(int status) { return name_at(walk_status_names, NAMES_LEN(walk_status_names), status); }

const char *tdp_policy_value_name(const char *policy_switch, int value)
{
	static const struct {
		const char *name;
		const char *const *values;
		int n;
	} switches[] = {
		{"root_lifetime", root_lifetime_names, NAMES_LEN(root_lifetime_names)},
		{"dirty_log_enable_flush", dirty_log_enable_flush_names, NAMES_LEN(dirty_log_enable_flush_names)},
		{"removed_pt_flush", removed_pt_flush_names, NAMES_LEN(removed_pt_flush_names)},
		{"huge_recovery", huge_recovery_names, NAMES_LEN(huge_recovery_names)},
	};
	if (!policy_switch)
		return NULL;
	for (int i = 0; i < NAMES_LEN(switches); i++)
		if (!strcmp(policy_switch, switches[i].name))
			return name_at(switches[i].values, switches[i].n, value);
	return NULL;
}

void tdp_spte_constants(struct tdp_spte_constants *out)
{
	out->mmu_present = SPTE_MMU_PRESENT;
	out->shadow_nonpresent = SHADOW_NONPRESENT_VALUE;
	out->frozen = FROZEN_SPTE;
	out->pfn_mask = SPTE_PFN_MASK;
}
_Static_assert(TDP_BATCH_WALKED == TDP_OUT_BLOCKED + 1 && TDP_BATCH_FAULTS == TDP_BATCH_WALKED + TDP_TLB_HIT_L2 + 1,
	       "tdp_access_batch() counts: outcomes, then tlb_hit values, then faults");

static const struct { const char *name, *arch, *where, *what; } flush_sites[] = {
#define SITE(id, name, arch, where, what) [FS_##id] = {name, arch, where, what},
#include "flush_sites.def"
#undef SITE
};
_Static_assert(NAMES_LEN(flush_sites) == FS_COUNT, "a name for every flush site");

int tdp_flush_site_count(void) { return FS_COUNT - 1; }
const char *tdp_flush_site_name(int id) { return id > 0 && id < FS_COUNT ? flush_sites[id].name : NULL; }
const char *tdp_flush_site_arch(int id) { return id > 0 && id < FS_COUNT ? flush_sites[id].arch : NULL; }
const char *tdp_flush_site_where(int id) { return id > 0 && id < FS_COUNT ? flush_sites[id].where : NULL; }
const char *tdp_flush_site_what(int id) { return id > 0 && id < FS_COUNT ? flush_sites[id].what : NULL; }
