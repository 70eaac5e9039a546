/* tdpfast.h — the one public header: what the Python bindings (cffi) see.
 * Every function returns 0 or a negative TDP_E* code; the message that names the
 * bad argument is then available from tdp_errmsg(vm). A call rejected for its
 * arguments or for the model's state leaves the model exactly as it was. Three calls
 * can stop half-way by design, as their KVM counterparts do, and say so: an access
 * batch stops before an access that might not get its frames (not an error), and a
 * split or a stepped operation that runs out of frames keeps what it did.
 * This file is parsed by cffi: keep it free of macros. */
#ifndef TDPFAST_H
#define TDPFAST_H
#include <stdint.h>
#include <stddef.h>

typedef struct tdp_vm tdp_vm;

enum tdp_err {
	TDP_OK = 0,
	TDP_EINVAL = -1,    /* bad argument (ValueError) */
	TDP_ENOENT = -2,    /* unknown/freed object (KeyError) */
	TDP_ENOMEM = -3,    /* frame pool or host memory exhausted (MemoryError) */
	TDP_ESTATE = -4,    /* not allowed in the current state (ValueError) */
	TDP_EIMAGE = -5,    /* malformed memory image (ValueError) */
	TDP_EMISSING = -6,  /* memory image lacks a page the walk needs (KeyError) */
	TDP_ELIVELOCK = -7  /* a fault kept retrying (liveness) */
};

enum tdp_arch { TDP_VMX = 0, TDP_SVM = 1 };
enum tdp_access { TDP_ACC_READ = 0, TDP_ACC_WRITE = 1, TDP_ACC_EXEC = 2, TDP_ACC_EXEC_USER = 3 };
enum tdp_walk_status { TDP_WALK_OK = 0, TDP_WALK_VIOLATION = 1, TDP_WALK_MISCONFIG = 2, TDP_WALK_NPF = 3 };
/* The INVEPT and INVVPID type operands (Intel SDM Vol. 2, "INVEPT" and "INVVPID"). */
enum tdp_invept_type { TDP_INVEPT_SINGLE_CONTEXT = 1, TDP_INVEPT_GLOBAL = 2 };
enum tdp_invvpid_type { TDP_INVVPID_INDIVIDUAL_ADDRESS = 0, TDP_INVVPID_SINGLE_CONTEXT = 1,
			TDP_INVVPID_ALL_CONTEXT = 2, TDP_INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 3 };
/* Where an access found its translation (struct tdp_access_result's tlb_hit). */
enum tdp_tlb_hit { TDP_TLB_WALKED = 0, TDP_TLB_HIT_L1 = 1, TDP_TLB_HIT_L2 = 2 };
/* tdp_access_batch()'s counts[]: one per outcome, one per tlb_hit, then faults and violations. */
enum tdp_batch_count {
	TDP_BATCH_OK = 0, TDP_BATCH_MMIO = 1, TDP_BATCH_LIVELOCK = 2, TDP_BATCH_BLOCKED = 3,
	TDP_BATCH_WALKED = 4, TDP_BATCH_L1_HITS = 5, TDP_BATCH_L2_HITS = 6, TDP_BATCH_FAULTS = 7,
	TDP_BATCH_VIOLATIONS = 8, TDP_BATCH_NCOUNTS = 9
};
/* KVM's SPTE constants the bindings decode with (mmu/spte.h, v6.10+ era). */
struct tdp_spte_constants {
	uint64_t mmu_present;        /* SPTE_MMU_PRESENT_MASK */
	uint64_t shadow_nonpresent;  /* SHADOW_NONPRESENT_VALUE */
	uint64_t frozen;             /* FROZEN_SPTE */
	uint64_t pfn_mask;           /* SPTE_BASE_ADDR_MASK: bits 51:12 */
};
void tdp_spte_constants(struct tdp_spte_constants *out);
enum tdp_tlb_mode { TDP_TLB_SETASSOC = 0, TDP_TLB_ADVERSARIAL = 1 };
enum tdp_repl { TDP_REPL_LRU = 0, TDP_REPL_PLRU = 1, TDP_REPL_RANDOM = 2 };
enum tdp_root_lifetime { TDP_ROOT_PRESERVE = 0, TDP_ROOT_ZAP_ON_LAST_PUT = 1 };
enum tdp_violation_kind {
	TDP_V_USE_AFTER_FREE = 1,
	TDP_V_STALE_PAGE_TABLE = 2,
	TDP_V_LOST_DIRTY = 3,
	TDP_V_STALE_WRITE = 4,
	TDP_V_LIVELOCK = 5,
	/* State invariants (checker.c; struct tdp_config.invariants selects them): not a
	 * guest access but the tables or roots in a state KVM never leaves them in. The
	 * violation's root, gpa (gfn << 12), level and spte say where; vcpu is -1. */
	TDP_V_NOTIFIER_RANGE_MAPPED = 6, /* I1: an SPTE maps a page the MMU notifier is taking away */
	TDP_V_DELETED_SLOT_MAPPED = 7,   /* I5: an SPTE maps a gfn of a memslot whose deletion returned */
	TDP_V_STALE_FAULT_INSTALL = 8,   /* I5: a fault installed into a root invalidated under it */
	TDP_V_MALFORMED_TABLE = 9,       /* a present non-leaf SPTE that is not a live table of its level */
	TDP_V_FROZEN_SPTE = 10,          /* a frozen SPTE survived an operation in a reachable table */
	TDP_V_LEAF_COUNT = 11,           /* the leaf counters (pages_4k/2m/1g) differ from the tables */
	TDP_V_ROOT_REFCOUNT = 12,        /* I7: a root's refcount is not the number of its holders */
	TDP_V_LEAKED_TABLE = 13,         /* I7: a table page no root reaches and nobody freed */
	TDP_V_UNLOGGED_WRITABLE = 14,    /* I6: after dirty logging was enabled or harvested, a writable
	                                  * SPTE in a valid root maps a gfn the dirty log does not hold */
	TDP_V_TLB_TAG_ALIAS = 15,        /* SVM: a VMRUN with an ASID another VMCB on the pCPU holds in the
	                                  * current generation (two address spaces share TLB entries) */
	TDP_V_STALE_GUEST_TRANSLATION = 16 /* a combined entry the guest changed and asked KVM to flush
	                                  * (a serviced KVM_REQ_TLB_FLUSH_GUEST): KVM owes the flush */
};
/* The state invariants a VM checks (struct tdp_config.invariants, a mask): after
 * every top-level operation, which includes every stop of a stepped operation at a
 * yield point, and where the invariant must hold inside an operation. */
enum tdp_invariant {
	TDP_INV_NOTIFIER = 1, /* I1: after an MMU-notifier invalidation zapped its range */
	TDP_INV_MEMSLOT = 2,  /* I5: after memslot deletion; faults into invalidated roots */
	TDP_INV_TABLES = 4,   /* well-formed tables, no frozen SPTE, leaf counters */
	TDP_INV_ROOTS = 8,    /* I7: root refcounts equal holders, no leaked table */
	TDP_INV_DIRTY_LOG = 16, /* I6: a write after dirty logging protected a page faults or is logged */
	TDP_INV_ALL = 31
};
/* How the tables' and roots' invariants are walked (struct tdp_config.invariant_walk). The
 * verdicts are the same: the incremental walk reads again only the tables written or
 * re-purposed since the last walk, and hands over to the full walk when it sees anything
 * wrong, so that the report is the full walk's. */
enum tdp_invariant_walk {
	TDP_INV_WALK_INCREMENTAL = 0, /* default */
	TDP_INV_WALK_FULL = 1,        /* every table from the roots: the specification */
	TDP_INV_WALK_CROSSCHECK = 2   /* both, an engine warning (vm.health()) where they disagree */
};
enum tdp_access_outcome { TDP_OUT_OK = 0, TDP_OUT_MMIO = 1, TDP_OUT_LIVELOCK = 2, TDP_OUT_BLOCKED = 3,
			  TDP_OUT_GUEST_PF = 4 /* guest paging: the guest's own #PF (tdp_guest_access()) */ };
/* What a host frame is (tdp_frame_state(), and struct tdp_violation's frame_state). */
enum tdp_frame_state {
	TDP_FRAME_UNUSED = 0,   /* a pool frame never handed out; in a violation: a page outside
				 * the pool (a memslot's own page) that the gfn no longer maps */
	TDP_FRAME_FREE = 1,     /* on the pool's free stack */
	TDP_FRAME_TABLE = 2,    /* a TDP page-table page */
	TDP_FRAME_GUEST = 3,    /* a pool page backing a guest page */
	TDP_FRAME_RCU = 4,      /* unlinked or released, waiting for the RCU grace period */
	TDP_FRAME_CURRENT = 5   /* violations only: a page outside the pool that backs the gfn now */
};
enum tdp_memslot_flags { TDP_SLOT_READONLY = 1, TDP_SLOT_DIRTY_LOG = 2 };
enum tdp_vcpu_mode { TDP_OUTSIDE_GUEST = 0, TDP_IN_GUEST = 1, TDP_EXITING_GUEST = 2 };
enum tdp_request {
	TDP_REQ_TLB_FLUSH = 1, TDP_REQ_TLB_FLUSH_CURRENT = 2, TDP_REQ_TLB_FLUSH_GUEST = 4,
	TDP_REQ_MMU_FREE_OBSOLETE_ROOTS = 8, TDP_REQ_LOAD_MMU_PGD = 16,
	TDP_REQ_ALL = 31        /* every request bit tdp_vcpu_request() accepts */
};
/* The switches of struct tdp_policy that take one of several values. */
enum tdp_dirty_log_enable_flush { TDP_DIRTY_LOG_FLUSH_ALWAYS = 0, TDP_DIRTY_LOG_FLUSH_IF_CHANGED = 1 };
enum tdp_removed_pt_flush { TDP_REMOVED_PT_FLUSH_NONE = 0, TDP_REMOVED_PT_FLUSH_TABLE = 1,
			    TDP_REMOVED_PT_FLUSH_LAST_CHILD = 2 };
enum tdp_huge_recovery { TDP_HUGE_RECOVERY_RECOVER = 0, TDP_HUGE_RECOVERY_ZAP_COLLAPSIBLE = 1 };
/* Kinds of the internal trace records (struct tdp_trace_rec). */
enum tdp_trace_kind {
	TDP_TR_SPTE_CHANGED = 1, TDP_TR_REMOTE_FLUSH = 2, TDP_TR_RANGE_FLUSH = 3, TDP_TR_VENDOR_FLUSH = 4,
	TDP_TR_ROOT_ALLOC = 5, TDP_TR_ROOT_PUT = 6, TDP_TR_ROOT_FREE = 7, TDP_TR_FAULT = 8, TDP_TR_YIELD = 9,
	TDP_TR_IPI = 10, TDP_TR_NEW_ASID = 11
};

struct tdp_config {
	int arch;             /* TDP_VMX / TDP_SVM */
	int levels;           /* 4 or 5 */
	uint64_t seed;
	int nvcpus;
	int npcpus;
	int ad;               /* EPT A/D bits enabled (NPT: always) */
	int mbec;             /* EPT mode-based execute control */
	int maxphyaddr;       /* host and guest MAXPHYADDR */
	uint64_t hpa_base;    /* first host physical address of the frame pool */
	uint32_t frame_limit; /* 0 = unlimited */
	uint32_t max_asid;    /* SVM: highest ASID (CPUID 8000_000A EBX - 1) */
	uint32_t min_asid;    /* SVM: first ASID KVM hands out */
	int flush_by_asid;    /* SVM FlushByAsid: TLB_CONTROL 3 instead of a new ASID */
	int trace;            /* keep the internal trace (flushes, zaps, fills) */
	int record;           /* keep the event log (off for benchmarks) */
	int no_bulk;          /* test hook: always take the per-SPTE path (the specification)
	                       * instead of the whole-table bulk paths that give the same result */
	int invariants;       /* enum tdp_invariant mask of state invariants to check (0: none) */
	int invariant_walk;   /* enum tdp_invariant_walk: how the tables' invariants are walked */
	int stale_iter;       /* test hook: an injected bug - after a yield the TDP iterator goes
	                       * on from the tables it held instead of restarting from the root;
	                       * the engine must report the stale handle, not follow it */
	int stale_fault;      /* test hook: an injected bug - a page fault's second half skips
	                       * is_page_fault_stale() and maps the pfn its first half saw */
	int no_progress;      /* test hook: an injected bug - the TDP iterator yields without
	                       * forward progress (before ed5e484b79e8); a walk that would never
	                       * finish must be reported as a livelock, not hang the caller */
	int mutant;           /* the engine's mutation test: remove this flush site (1 ..
	                       * tdp_flush_site_count(), see tdp_flush_site_name(); 0: none) */
};

struct tdp_tlb_array_config { int sets; int ways; };

struct tdp_tlb_config {
	int mode;                          /* TDP_TLB_SETASSOC / TDP_TLB_ADVERSARIAL */
	int repl;                          /* replacement policy */
	struct tdp_tlb_array_config l1[3]; /* L1 DTLB for 4K, 2M, 1G */
	struct tdp_tlb_array_config l2;    /* L2 STLB shared by 4K and 2M */
	struct tdp_tlb_array_config l2_1g; /* L2 1G array (sets=0: none) */
	struct tdp_tlb_array_config psc[6];/* psc[L]: cache of level-L entries, L = 2..5 */
	uint32_t junk;                     /* pre-fill with this many junk entries at boot */
};

struct tdp_policy {
	int flush_on_root_load;        /* kvm_mmu_load() flushes the current context */
	int flush_on_migrate;          /* VMX: TLB_FLUSH on VMCS cpu change; SVM: reset ASID gen */
	int flush_on_put_root;         /* eager remote flush when a root is put */
	int root_lifetime;             /* TDP_ROOT_PRESERVE (v6.6+) / ZAP_ON_LAST_PUT (v5.17) */
	int remote_flush_all_contexts; /* KVM_REQ_TLB_FLUSH flushes all contexts (B16 fix) */
	int shared_zap_flush;          /* tdp_mmu_zap_spte_atomic flushes between freeze and clear */
	int flush_before_yield;        /* pending flush is done before dropping the lock */
	int precise_range_flush;       /* ranged flushes stay ranged (Hyper-V style) */
	int dirty_log_enable_flush;    /* 0 always (b64d740ea7dd), 1 only if an SPTE changed (B14) */
	int notifier_zaps_invalid_roots; /* notifier unmap visits invalid roots too */
	int per_root_flush_reset;      /* B1: each root's zap starts with flush = false */
	int nx_recovery_flush_assign;  /* B4: flush = zap_sp() instead of |= */
	int removed_pt_flush;          /* B6 era: 0 none (caller), 1 table range, 2 last child only */
	int iter_skip_after_yield;     /* B9 */
	int map_huge_over_table_flush; /* fault flushes after replacing a table by a huge leaf */
	int nx_huge_pages;             /* iTLB multihit mitigation */
	int nx_recovery_ratio;         /* recover 1/ratio of the possible-NX pages per run */
	int yield_every;               /* need_resched() every N iterations (0: never) */
	int rcu_gp_at_yield;           /* a grace period may end while a walker has yielded */
	int rcu_gp_at_op_end;          /* a grace period ends after every top-level operation */
	int memslot_delete_zap_all;    /* 1: zap_all_fast (upstream); 0: zap only the slot (B18) */
	int eager_split;               /* split huge pages when dirty logging is enabled */
	int huge_recovery;             /* 0 recover in place, batched flush (v6.13+); 1 zap collapsible, flush each (<= v6.12) */
	int flush_after_zap;           /* every zap operation that changed an SPTE ends with a remote flush */
	int per_spte_flush;            /* every changed SPTE is flushed (gfn, level) on the spot */
	/* Release behaviour that is not a flush decision (Policy.release() in tdpfast/policy.py
	 * names the release each value belongs to). */
	int ept_soft_ad;               /* EPT without A/D: SPTEs still carry A and D (v6.13, 3835819fb1b3) */
	int fault_spurious_if_allowed; /* a fault on a present leaf that allows it is RET_PF_SPURIOUS (386d69f9f29b) */
	int age_valid_roots_only;      /* aging walks only valid roots (v6.13, 526e609f0567) */
	int per_vmcb_asid;             /* SVM: ASID generation and last pCPU per VMCB (0: per vCPU, B22) */
};

struct tdp_costs {
	uint64_t spte_write, walk_ref, tlb_hit, tlb_miss, flush_current, flush_all,
		 flush_range_page, ipi, vm_exit, vm_entry, fault, remote_flush;
};

struct tdp_walk_result {
	int status;           /* enum tdp_walk_status */
	int level;            /* leaf level, or level of the entry that ended the walk */
	uint64_t hpa;
	uint64_t qualification; /* EPT violation exit qualification */
	uint64_t error_code;    /* NPF EXITINFO1 */
	int refs;
	int nentries;
	uint64_t entries[5];
	int nad;
	uint64_t ad_addr[5];
	uint64_t ad_old[5];
	uint64_t ad_new[5];
	unsigned perms;       /* R|W<<1|X<<2|XU<<3 accumulated over the walk */
};

struct tdp_hw_params {
	int fmt;              /* 0 ept, 1 npt */
	int levels;
	int ad;
	int maxphyaddr;
	int exec_only;
	int mbec;
	int paging_structure; /* a guest paging-structure access, not a final translation */
};

struct tdp_root_info {
	uint32_t id;
	uint64_t hpa;
	int level;
	int valid;
	int refcount;
	int as_id;
	int guest_mode;
	int scheduled_to_zap;
};

struct tdp_memslot_info {
	int id;
	uint64_t base_gfn;
	uint64_t npages;
	uint32_t flags;
	int max_level;
	uint64_t host_base_pfn;
};

struct tdp_vcpu_info {
	int mode;
	int pcpu;             /* -1 never loaded */
	int last_pcpu;        /* VMCS/VMCB last loaded on */
	uint32_t root_id;     /* 0 none */
	uint32_t requests;
	uint32_t asid;        /* SVM */
	uint64_t asid_generation;
	uint32_t vpid;
	int tlb_control;      /* SVM VMCB TLB_CONTROL pending for the next VMRUN */
	int in_l2;            /* running L2 (nested) */
	uint32_t l2_root_id;  /* the other level's root: L2's while in L1, L1's while in L2 (0 none) */
	int guest_levels;     /* the guest's paging at this level: 0 off, 4 or 5 */
	uint64_t guest_cr3;   /* its CR3 (top table address | PCID) */
};

struct tdp_pcpu_info {
	int vcpu;             /* vCPU in guest mode here, -1 none */
	uint64_t asid_generation;
	uint32_t next_asid;
	uint32_t min_asid;
	uint32_t max_asid;
	uint64_t tlb_entries; /* live entries (all contexts) */
	uint64_t psc_entries;
};

struct tdp_access_result {
	int outcome;          /* enum tdp_access_outcome; BLOCKED: an invalidation of this gfn is in progress */
	uint64_t hpa;
	int tlb_hit;          /* 1 L1 hit, 2 L2 hit, 0 walked */
	int faults;           /* EPT violations / #NPFs taken by KVM for this access */
	int walk_refs;
	int violation;        /* index+1 into violations, 0 none */
};

struct tdp_violation {
	int kind;
	int vcpu;
	int pcpu;
	uint64_t gpa;
	uint64_t tag;         /* EP4TA (VMX) or ASID (SVM) */
	uint64_t stale_pfn;   /* the frame the translation used */
	uint64_t expected_pfn;/* the gfn's backing now (~0: none) */
	uint64_t event;       /* index of the event that exposed it */
	int access;
	int level;            /* page size of the stale translation, or table level */
	int frame_state;      /* what the stale frame is now (enum tdp_frame_state) */
	uint64_t batch_index; /* position inside an access batch */
	uint32_t root;        /* state invariants: the root id (0: none) */
	uint64_t spte;        /* state invariants: the offending SPTE (or the counter) */
};

struct tdp_event {
	uint32_t op;
	uint32_t pad;
	uint64_t a[5];
};

struct tdp_tlb_entry {
	int kind;             /* 0 TLB translation, 1 paging-structure-cache entry */
	int level;            /* page size (TLB) or entry level (PSC) */
	uint64_t tag;         /* EP4TA pfn (VMX) / ASID (SVM) */
	uint64_t vpn;         /* gfn >> 9*(level-1) */
	uint64_t pfn;         /* target: page or next table */
	unsigned perms;
	int dirty;
	int structure;        /* 0 L1, 1 L2, 2 PSC, 3 adversarial store */
};

struct tdp_trace_rec {
	uint32_t kind;
	uint32_t level;
	uint64_t a, b, c;
};

/* configuration defaults */
void tdp_default_config(struct tdp_config *c);
void tdp_default_policy(struct tdp_policy *p);
void tdp_default_costs(struct tdp_costs *c);
int tdp_tlb_preset(const char *name, struct tdp_tlb_config *out);

/* VM */
int tdp_vm_create(const struct tdp_config *cfg, const struct tdp_tlb_config *tlb,
		  const struct tdp_policy *pol, const struct tdp_costs *costs, tdp_vm **out,
		  char *err, size_t errlen);
void tdp_vm_destroy(tdp_vm *vm);
const char *tdp_errmsg(tdp_vm *vm);
int tdp_set_policy(tdp_vm *vm, const struct tdp_policy *pol);
void tdp_get_policy(tdp_vm *vm, struct tdp_policy *pol);
int tdp_stat_count(void);
const char *tdp_stat_name(int i);
void tdp_stats(tdp_vm *vm, uint64_t *out);
void tdp_reset_stats(tdp_vm *vm);
uint64_t tdp_digest(tdp_vm *vm);
int tdp_synchronize_rcu(tdp_vm *vm);
void tdp_hostmem_info(tdp_vm *vm, uint64_t *out4); /* in use, free, rcu pending, limit */
uint32_t tdp_frame_state(tdp_vm *vm, uint64_t pfn, uint32_t *gen);

/* memslots and host events */
int tdp_memslot_add(tdp_vm *vm, uint64_t base_gfn, uint64_t npages, uint32_t flags,
		    int max_level, int *slot_id);
int tdp_memslot_delete(tdp_vm *vm, int slot_id);
int tdp_memslot_info(tdp_vm *vm, int slot_id, struct tdp_memslot_info *out);
int tdp_memslot_list(tdp_vm *vm, int *ids, int max, int *n);
int tdp_gfn_backing(tdp_vm *vm, uint64_t gfn, uint64_t *pfn);
int tdp_host_unmap(tdp_vm *vm, uint64_t start_gfn, uint64_t end_gfn);
int tdp_host_migrate(tdp_vm *vm, uint64_t gfn, uint64_t *new_pfn);
int tdp_host_age(tdp_vm *vm, uint64_t start_gfn, uint64_t end_gfn, int *young);
int tdp_dirty_log_enable(tdp_vm *vm, int slot_id, int enable);
int tdp_dirty_log_get(tdp_vm *vm, int slot_id, uint64_t *bitmap, size_t nwords, uint64_t *ndirty);
int tdp_write_protect_gfn(tdp_vm *vm, uint64_t gfn, int enable);

/* TDP MMU */
int tdp_mmu_alloc_root(tdp_vm *vm, int as_id, int guest_mode, uint32_t *root_id);
int tdp_mmu_put_root(tdp_vm *vm, uint32_t root_id);
int tdp_mmu_invalidate_all_roots(tdp_vm *vm);
int tdp_mmu_zap_invalidated_roots(tdp_vm *vm);
int tdp_mmu_zap_all_fast(tdp_vm *vm);
int tdp_mmu_roots(tdp_vm *vm, struct tdp_root_info *out, int max, int *n);
int tdp_mmu_map(tdp_vm *vm, uint32_t root_id, uint64_t gfn, int level, int *flush);
int tdp_mmu_map_range(tdp_vm *vm, uint32_t root_id, uint64_t start, uint64_t end, int level,
		      uint64_t *mapped);
int tdp_mmu_zap_gfn_range(tdp_vm *vm, uint64_t start, uint64_t end, int shared, int *flush);
int tdp_mmu_zap_root(tdp_vm *vm, uint32_t root_id, int shared);
int tdp_mmu_zap_sp(tdp_vm *vm, uint32_t root_id, uint64_t gfn, int level, int *flush);
int tdp_mmu_wrprot_range(tdp_vm *vm, uint64_t start, uint64_t end, int *flush);
int tdp_mmu_clear_dirty_range(tdp_vm *vm, uint64_t start, uint64_t end, int *flush);
int tdp_mmu_age_range(tdp_vm *vm, uint64_t start, uint64_t end, int *young);
int tdp_mmu_split_huge_pages(tdp_vm *vm, uint64_t start, uint64_t end, int target_level);
int tdp_mmu_recover_huge_pages(tdp_vm *vm, uint64_t start, uint64_t end, int *flush);
int tdp_mmu_recover_nx_huge_pages(tdp_vm *vm, int count, int *zapped);
int tdp_mmu_walk(tdp_vm *vm, uint32_t root_id, uint64_t gpa, int access,
		 struct tdp_walk_result *out);
int tdp_mmu_root_pointer(tdp_vm *vm, uint32_t root_id, uint64_t *value);
int tdp_mmu_tables(tdp_vm *vm, uint32_t root_id, uint64_t *addrs, uint8_t *data, size_t max,
		   size_t *n);
int tdp_mmu_read_spte(tdp_vm *vm, uint32_t root_id, uint64_t gfn, int level, uint64_t *spte);
uint32_t tdp_mmu_newest_root(tdp_vm *vm);

/* hardware walker on a memory image: page_addrs sorted ascending, pages 4096 bytes each */
int tdp_hw_walk(const uint64_t *page_addrs, const uint8_t *pages, size_t npages,
		uint64_t root_pointer, uint64_t gpa, int access, const struct tdp_hw_params *p,
		struct tdp_walk_result *out, char *err, size_t errlen);

/* vCPUs, pCPUs, TLBs */
int tdp_vcpu_run(tdp_vm *vm, int vcpu, int pcpu);
int tdp_vcpu_exit(tdp_vm *vm, int vcpu);
int tdp_vcpu_info(tdp_vm *vm, int vcpu, struct tdp_vcpu_info *out);
int tdp_vcpu_request(tdp_vm *vm, int vcpu, uint32_t requests);
int tdp_pcpu_info(tdp_vm *vm, int pcpu, struct tdp_pcpu_info *out);
int tdp_access(tdp_vm *vm, int vcpu, uint64_t gpa, int access, struct tdp_access_result *out);
int tdp_access_batch(tdp_vm *vm, int vcpu, const uint64_t *gpas, const uint8_t *accesses,
		     int default_access, size_t n, struct tdp_access_result *per,
		     uint64_t *counts, size_t *done);
int tdp_flush_remote_tlbs(tdp_vm *vm);
int tdp_flush_remote_tlbs_range(tdp_vm *vm, uint64_t gfn, uint64_t npages);
int tdp_invept(tdp_vm *vm, int pcpu, int type, uint64_t eptp);
int tdp_invvpid(tdp_vm *vm, int pcpu, int type, uint32_t vpid, uint64_t gla);
int tdp_svm_set_tlb_control(tdp_vm *vm, int vcpu, int value);
int tdp_tlb_dump(tdp_vm *vm, int pcpu, struct tdp_tlb_entry *out, size_t max, size_t *n);
int tdp_tlb_fill_junk(tdp_vm *vm, int pcpu, uint32_t count, uint64_t max_gfn);

/* Guest paging (guest_paging.c): the guest's own page tables in guest memory, the
 * two-dimensional walk, combined TLB entries, and the guest's flushes. */
enum tdp_gpte_flags {
	TDP_GPTE_WRITE = 1, TDP_GPTE_NX = 2, TDP_GPTE_GLOBAL = 4, TDP_GPTE_ACCESSED = 8, TDP_GPTE_DIRTY = 16,
	TDP_GPTE_USER = 32
};
enum tdp_invpcid_type {
	TDP_INVPCID_ADDRESS = 0, TDP_INVPCID_SINGLE_CONTEXT = 1, TDP_INVPCID_ALL_INCLUDING_GLOBALS = 2,
	TDP_INVPCID_ALL_EXCEPT_GLOBALS = 3
};
struct tdp_guest_access_result {
	int outcome;          /* enum tdp_access_outcome; GUEST_PF: the guest's tables refused it */
	uint64_t gpa, hpa;
	int tlb_hit;          /* 1: a combined TLB entry; 0: the 2D walk */
	int guest_level;      /* the guest page's level (1 4K, 2 2M, 3 1G) */
	int refs;             /* memory references: guest entries read + nested walk references */
	int guest_refs;       /* guest paging-structure entries read */
	int nested_refs;      /* EPT/NPT references (guest table addresses, the final address, A/D writes) */
	int faults;           /* EPT violations / #NPFs taken by KVM on the way */
	uint32_t pf_error;    /* GUEST_PF: the #PF error code (P 1, W 2, RSVD 8, I/D 16) */
	int stale_guest;      /* the TLB gave a translation the guest's tables no longer give
	                       * (allowed until the guest flushes it: the guest owes the flush) */
	int violation;        /* index+1 into violations (host side), 0 none */
};
struct tdp_combined_entry {
	uint32_t id;          /* VPID (VMX) or ASID (SVM) */
	uint64_t ep4ta;       /* VMX: EPT root address; SVM: 0 */
	uint32_t pcid;
	uint64_t gva, gpa, hpa;
	int perms;            /* 1 R, 2 W, 4 X: the rights both dimensions proved */
	int is_global, dirty, guest_level;
};
int tdp_guest_set_pt_pool(tdp_vm *vm, uint64_t start_gfn, uint64_t npages);
int tdp_guest_new_table(tdp_vm *vm, uint64_t *gfn);
int tdp_guest_map(tdp_vm *vm, uint64_t cr3_gfn, int levels, uint64_t gva, uint64_t gpa, int level, uint32_t flags);
int tdp_guest_unmap(tdp_vm *vm, uint64_t cr3_gfn, int levels, uint64_t gva, int *was_present);
int tdp_guest_write_pte(tdp_vm *vm, uint64_t table_gfn, int index, uint64_t value);
int tdp_guest_read_pte(tdp_vm *vm, uint64_t table_gfn, int index, uint64_t *value);
int tdp_guest_translate(tdp_vm *vm, uint64_t cr3_gfn, int levels, uint64_t gva, uint64_t *gpa, int *level,
			uint32_t *perms);
int tdp_guest_set_paging(tdp_vm *vm, int vcpu, int levels, int pcide);
int tdp_guest_load_cr3(tdp_vm *vm, int vcpu, uint64_t value);
int tdp_guest_access(tdp_vm *vm, int vcpu, uint64_t gva, int access, struct tdp_guest_access_result *out);
int tdp_guest_invlpg(tdp_vm *vm, int vcpu, uint64_t gva);
int tdp_guest_invpcid(tdp_vm *vm, int vcpu, int type, uint32_t pcid, uint64_t gva);
int tdp_guest_pv_flush(tdp_vm *vm, int vcpu);
/* Many guest-linear accesses in one call (accesses: NULL for default_access for all).
 * counts[TDP_GBATCH_NCOUNTS]; *done: how many ran (all, unless an error stopped it). */
enum tdp_guest_batch_count {
	TDP_GBATCH_OK = 0, TDP_GBATCH_GUEST_PF = 1, TDP_GBATCH_OTHER = 2, TDP_GBATCH_COMBINED_HITS = 3,
	TDP_GBATCH_WALKED = 4, TDP_GBATCH_REFS = 5, TDP_GBATCH_FAULTS = 6, TDP_GBATCH_STALE_GUEST = 7,
	TDP_GBATCH_VIOLATIONS = 8, TDP_GBATCH_NCOUNTS = 9
};
int tdp_guest_access_batch(tdp_vm *vm, int vcpu, const uint64_t *gvas, const uint8_t *accesses, int default_access,
			   size_t n, uint64_t *counts, size_t *done);
int tdp_combined_dump(tdp_vm *vm, int pcpu, struct tdp_combined_entry *out, size_t max, size_t *n);

/* Nested (nested.c): L1 runs L2 without nested EPT/NPT, so L2 shares L1's
 * guest-physical space through its own TDP root (role.guest_mode) and its own TLB
 * tag (VPID02; vmcb02's ASID). */
int tdp_nested_enter(tdp_vm *vm, int vcpu);
int tdp_nested_exit(tdp_vm *vm, int vcpu);
/* L1 executes INVVPID for L2 (type enum tdp_invvpid_type, vpid12 its operand): KVM
 * emulates it on VPID02 (handle_invvpid()). */
int tdp_nested_invvpid(tdp_vm *vm, int vcpu, int type, uint32_t vpid12, uint64_t gla);

/* long operations stepped from yield point to yield point (KVM drops mmu_lock there) */
enum tdp_op_kind {
	TDP_OP_ZAP_GFN_RANGE = 1,   /* kvm_zap_gfn_range: a start, b end, c shared; flushes; result: flushed */
	TDP_OP_HOST_UNMAP = 2,      /* a start, b end: the MMU-notifier invalidation */
	TDP_OP_ZAP_INVALIDATED_ROOTS = 3,
	TDP_OP_DELETE_MEMSLOT = 4,  /* a slot id */
	TDP_OP_WRPROT = 5,          /* a start, b end; flushes if changed; result: flushed */
	TDP_OP_CLEAR_DIRTY = 6,     /* a start, b end; flushes if changed; result: flushed */
	TDP_OP_SPLIT = 7,           /* a start, b end, c target level */
	TDP_OP_RECOVER_HUGE = 8,    /* a start, b end; flushes itself */
	TDP_OP_NX_RECOVER = 9,      /* a count (0: by ratio) */
	TDP_OP_PAGE_FAULT = 10      /* a vcpu, b gfn, c access: a fault in two halves, the pfn looked up
	                             * at the start, installed at the first step unless it went stale
	                             * meanwhile; result: enum tdp_fault_result */
};
#define TDP_OP_LAST TDP_OP_PAGE_FAULT
/* What a page fault did (the result of TDP_OP_PAGE_FAULT): KVM's RET_PF_* values. */
enum tdp_fault_result { TDP_PF_FIXED = 0, TDP_PF_SPURIOUS = 1, TDP_PF_RETRY = 2, TDP_PF_EMULATE = 3,
			TDP_PF_NOMEM = 4, TDP_PF_BLOCKED = 5 };
int tdp_op_start(tdp_vm *vm, int kind, uint64_t a, uint64_t b, uint64_t c, int yield_every, uint32_t *op_id);
int tdp_op_step(tdp_vm *vm, uint32_t op_id, int *done, int *result);
int tdp_op_list(tdp_vm *vm, uint32_t *ids, int max, int *n);

/* kvm_zap_gfn_range() as its callers run it: zap the leaf SPTEs of [start, end) on
 * the valid roots, then perform the flush the zap reported as needed (a ranged
 * remote flush of [start, end)) before returning. *flushed: whether it flushed.
 * Logged as tdp_mmu_zap_gfn_range() followed, if it flushed, by
 * tdp_flush_remote_tlbs_range(). tdp_mmu_zap_gfn_range() alone only reports
 * "flush needed" and leaves the flush to the caller. */
int tdp_kvm_zap_gfn_range(tdp_vm *vm, uint64_t start, uint64_t end, int shared, int *flushed);

/* the random explorer (fuzz.c): random operations until a violation or max_ops */
int tdp_fuzz(tdp_vm *vm, uint64_t seed, uint64_t max_ops, uint64_t *ops_done);
/* The same with another stream of operations (0: tdp_fuzz()'s) under the swarm settings
 * of `seed`: what coverage-guided exploration runs again when a VM reached new signatures. */
int tdp_fuzz_stream(tdp_vm *vm, uint64_t seed, uint64_t stream, uint64_t max_ops, uint64_t *ops_done);
/* The coverage signatures this VM's tdp_fuzz() runs reached (coverage.h: explorer
 * operation x SPTE transition x level x root invalid x TLB warm), as a bitmap of
 * TDP_COVERAGE_WORDS words (bit i: signature i); *count: how many are set.
 * TDP_EINVAL if nwords is too small. */
enum { TDP_COVERAGE_WORDS = 256, TDP_COVERAGE_SIGNATURES = 256 * 64 };
int tdp_fuzz_coverage(tdp_vm *vm, uint64_t *bits, size_t nwords, uint64_t *count);

/* The fewest frames a fault may need (levels + 1; every access keeps them available
 * and stops with TDP_ENOMEM otherwise): with the root's own frame, a VM needs a
 * frame_limit of at least tdp_fault_frames(levels) + 1 for any access to fault. */
int tdp_fault_frames(int levels);

/* checker, event log, trace */
size_t tdp_violation_count(tdp_vm *vm);
size_t tdp_violations(tdp_vm *vm, struct tdp_violation *out, size_t max);
size_t tdp_event_count(tdp_vm *vm);
size_t tdp_events(tdp_vm *vm, struct tdp_event *out, size_t start, size_t max);
int tdp_event_batch(tdp_vm *vm, size_t event, uint64_t *gpas, uint8_t *accesses, size_t max);
/* Apply logged events (not access batches) to this VM in order. flags: STOP_AT_VIOLATION
 * stops after the event that exposed the first violation; SKIP_FAILING skips events
 * that fail (the fuzz shrinker's candidates), else the first failing event ends the
 * replay with its error (the message names the event) and *applied = events before it. */
enum tdp_replay_flags { TDP_REPLAY_STOP_AT_VIOLATION = 1, TDP_REPLAY_SKIP_FAILING = 2 };
int tdp_replay(tdp_vm *vm, const struct tdp_event *ev, size_t n, int flags, size_t *applied);
size_t tdp_trace_count(tdp_vm *vm);
size_t tdp_trace(tdp_vm *vm, struct tdp_trace_rec *out, size_t start, size_t max);

/* Health of the model. tdp_warn_count(): states the model must never reach (KVM's
 * WARN_ON()) that it reached, with the first described by tdp_warn_message() (""
 * when none); tests assert it is 0. tdp_dropped_records(): events, violations or
 * trace records that could not be kept for want of host memory; the call after
 * the one that lost them fails with TDP_ENOMEM. */
uint64_t tdp_warn_count(tdp_vm *vm);
const char *tdp_warn_message(tdp_vm *vm);
uint64_t tdp_dropped_records(tdp_vm *vm);

/* The event vocabulary (the first byte of each event_log() record): codes run from 1
 * to tdp_event_kinds() - 1 (0 is never used); the name is the public call the event
 * replays as, nargs how many of the record's five words are its arguments. */
int tdp_event_kinds(void);
const char *tdp_event_name(int code);  /* NULL: unused code or out of range */
int tdp_event_nargs(int code);         /* -1: unknown code */

/* Names of the public enums, so that bindings never retype them: each returns NULL
 * for a value that is not in its enum. */
const char *tdp_error_name(int code);              /* enum tdp_err: "ok", "invalid_argument", ... */
const char *tdp_arch_name(int arch);               /* enum tdp_arch: "vmx", "svm" */
const char *tdp_access_name(int access);           /* enum tdp_access: "r", "w", "x", "xu" */
const char *tdp_access_outcome_name(int outcome);  /* enum tdp_access_outcome: "ok", "mmio", ... */
const char *tdp_violation_kind_name(int kind);     /* enum tdp_violation_kind: "use_after_free", ... */
const char *tdp_invariant_name(int bit);           /* one bit of enum tdp_invariant: "notifier", ... */
const char *tdp_frame_state_name(int state);       /* enum tdp_frame_state: "unused", "free", ... */
const char *tdp_vcpu_mode_name(int mode);          /* enum tdp_vcpu_mode: "outside_guest", ... */
const char *tdp_request_name(uint32_t bit);        /* one bit of enum tdp_request: "tlb_flush", ... */
const char *tdp_op_kind_name(int kind);            /* enum tdp_op_kind: "zap_gfn_range", ... */
const char *tdp_trace_kind_name(int kind);         /* enum tdp_trace_kind: "spte_changed", ... */
/* A policy switch that takes one of several values (root_lifetime,
 * dirty_log_enable_flush, removed_pt_flush, huge_recovery): the name of `value`. */
const char *tdp_invept_type_name(int type);         /* enum tdp_invept_type: "single", "global" */
const char *tdp_invvpid_type_name(int type);        /* enum tdp_invvpid_type: "individual", ... */
const char *tdp_walk_status_name(int status);       /* enum tdp_walk_status: "ok", "violation", ... */
const char *tdp_policy_value_name(const char *policy_switch, int value);
/* The engine's flush sites (the mutation test, struct tdp_config.mutant): ids 1 ..
 * tdp_flush_site_count(); name, vendor ("vmx", "svm"; "": both), the KVM function it
 * models, what it does. NULL out of range. */
int tdp_flush_site_count(void);
const char *tdp_flush_site_name(int id);
const char *tdp_flush_site_arch(int id);
const char *tdp_flush_site_where(int id);
const char *tdp_flush_site_what(int id);

#endif
