/* spte.h — KVM's shadow-page-table-entry encodings for TDP (EPT and NPT).
 *
 * Bit assignments follow KVM (mmu/spte.h, kvm_mmu_set_ept_masks,
 * kvm_mmu_reset_all_pte_masks) in the v6.10+ era: SHADOW_NONPRESENT_VALUE is
 * BIT(63) and FROZEN_SPTE is 0x5a0 | SHADOW_NONPRESENT_VALUE. */
#ifndef TDPFAST_SPTE_H
#define TDPFAST_SPTE_H
#include <stdbool.h>
#include <stdint.h>

typedef uint64_t u64;
typedef uint32_t u32;
typedef uint16_t u16;
typedef uint8_t u8;

enum { FMT_EPT = 0, FMT_NPT = 1 };

/* Common KVM software conventions (mmu/spte.h: SPTE_MMU_PRESENT_MASK, PT_WRITABLE_MASK,
 * PT_PAGE_SIZE_MASK). */
#define SPTE_MMU_PRESENT (1ull << 11)
#define SPTE_W (1ull << 1)
#define SPTE_PS (1ull << 7)
#define SPTE_PFN_MASK 0x000ffffffffff000ull /* bits 51:12 */
#define SHADOW_NONPRESENT_VALUE (1ull << 63)
#define FROZEN_SPTE (0x5a0ull | SHADOW_NONPRESENT_VALUE)

/* EPT hardware bits (Intel SDM Vol. 3C "EPT Translation Mechanism", 28.2.2 in the
 * 2016 edition; Linux asm/vmx.h VMX_EPT_*). */
#define EPT_R (1ull << 0)
#define EPT_W (1ull << 1)
#define EPT_X (1ull << 2)
#define EPT_MT_SHIFT 3
#define EPT_IPAT (1ull << 6)
#define EPT_A (1ull << 8)
#define EPT_D (1ull << 9)
#define EPT_XU (1ull << 10)
#define EPT_SVE (1ull << 63)
#define EPT_HOST_WRITABLE (1ull << 57)
#define EPT_MMU_WRITABLE (1ull << 58)
#define SPTE_TDP_AD_SHIFT 52 /* bits 53:52: 0 enabled, 1 disabled, 2 wrprot-only */
#define SPTE_TDP_AD_DISABLED (1ull << 52)
#define SPTE_ACC_TRACK_SAVED_SHIFT 54 /* R -> 54, X -> 56 */
#define MT_WB 6ull

/* NPT (long-mode PTE) bits (AMD APM Vol. 2 15.25 "Nested Paging": the host's
 * long-mode format; KVM's host-/MMU-writable in the available bits 9 and 10). */
#define NPT_P (1ull << 0)
#define NPT_W (1ull << 1)
#define NPT_U (1ull << 2)
#define NPT_A (1ull << 5)
#define NPT_D (1ull << 6)
#define NPT_NX (1ull << 63)
#define NPT_HOST_WRITABLE (1ull << 9)
#define NPT_MMU_WRITABLE (1ull << 10)

/* Access permissions handed to make_spte (KVM's ACC_* bits). */
enum { ACC_EXEC = 1, ACC_WRITE = 2, ACC_USER = 4, ACC_ALL = 7 };

/* Per-VM mask set: the values KVM computes once at module load. */
struct spte_masks {
	int fmt;
	bool ad;        /* EPT A/D enabled (NPT: always true) */
	bool soft_ad;   /* EPT A/D disabled, yet A and D are software bits of every SPTE (v6.13) */
	u64 present;    /* shadow_present_mask */
	u64 user;       /* shadow_user_mask */
	u64 x;          /* shadow_x_mask */
	u64 nx;         /* shadow_nx_mask */
	u64 accessed;
	u64 dirty;
	u64 host_writable;
	u64 mmu_writable;
	u64 memtype;    /* leaf memory type bits (WB | IPAT for EPT) */
	u64 acc_track;  /* bits cleared by access tracking (EPT: RWX) */
	u64 mmio_value;
	u64 mmio_mask;
};

void spte_masks_init(struct spte_masks *m, int fmt, bool ad, bool soft_ad);

static inline bool is_shadow_present_pte(u64 s) { return (s & SPTE_MMU_PRESENT) != 0; }
static inline bool is_frozen_spte(u64 s) { return s == FROZEN_SPTE; }
static inline bool is_large_pte(u64 s) { return (s & SPTE_PS) != 0; }
static inline bool is_last_spte(u64 s, int level) { return level == 1 || is_large_pte(s); }
static inline u64 spte_to_pfn(u64 s) { return (s & SPTE_PFN_MASK) >> 12; }
static inline u64 pages_per_level(int level) { return 1ull << (9 * (level - 1)); }
static inline int spte_index(u64 gfn, int level) { return (int)((gfn >> (9 * (level - 1))) & 511); }

bool is_mmio_spte(const struct spte_masks *m, u64 s);
bool spte_ad_enabled(u64 s);
bool is_writable_pte(u64 s);
bool is_mmu_writable_spte(const struct spte_masks *m, u64 s);
bool is_access_tracked_spte(const struct spte_masks *m, u64 s);
bool spte_is_accessed(const struct spte_masks *m, u64 s);
/* KVM's is_access_allowed(): the SPTE already permits the fault's access (write: W;
 * exec: X, or not NX; read: present to the hardware, PT_PRESENT_MASK = bit 0). */
bool is_access_allowed(const struct spte_masks *m, u64 s, bool write, bool exec);

/* make_spte: a leaf mapping pfn at level with ACC_* access. host_writable says whether
 * the host mapping permits writes; write_fault sets D eagerly, prefetch leaves A clear. */
u64 make_leaf_spte(const struct spte_masks *m, u64 pfn, int level, unsigned acc,
		   bool host_writable, bool write_fault, bool prefetch);
u64 make_nonleaf_spte(const struct spte_masks *m, u64 table_pfn);
u64 make_mmio_spte(const struct spte_masks *m, u64 gfn, u32 gen);
u32 mmio_spte_gen(u64 s);
u64 make_small_spte(const struct spte_masks *m, u64 huge, int huge_level, int index);
u64 make_huge_spte(const struct spte_masks *m, u64 small, int level);
u64 mark_spte_for_access_track(const struct spte_masks *m, u64 s);
u64 restore_acc_track_spte(const struct spte_masks *m, u64 s);
u64 make_spte_executable(const struct spte_masks *m, u64 s);
/* Hardware-effective permissions of one SPTE as R|W<<1|X<<2|XU<<3 (TLB perm bits). */
static inline unsigned spte_hw_perms(const struct spte_masks *m, u64 s)
{
	if (m->fmt == FMT_EPT)
		return (unsigned)((s & 7) | (((s >> 10) & 1) << 3));
	if (!(s & NPT_P) || !(s & NPT_U))
		return 0;
	/* NPT: readable when present (and U, always for KVM), exec unless NX. */
	return 1u | ((s & NPT_W) ? 2u : 0u) | ((s & NPT_NX) ? 0u : 4u | 8u);
}

#endif
