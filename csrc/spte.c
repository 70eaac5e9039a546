/* spte.c — building and editing SPTEs exactly as KVM's mmu/spte.c does for TDP. */
#include "spte.h"

/* The encodings the model relies on (mmu/spte.h). A frozen SPTE must look
 * not-present to hardware (EPT: no R/W/X; NPT: P clear) and to KVM (no
 * SPTE_MMU_PRESENT), as must SHADOW_NONPRESENT_VALUE. */
_Static_assert(!(FROZEN_SPTE & SPTE_MMU_PRESENT) && !(SHADOW_NONPRESENT_VALUE & SPTE_MMU_PRESENT),
	       "frozen and non-present SPTEs are not shadow-present");
_Static_assert(!(FROZEN_SPTE & (EPT_R | EPT_W | EPT_X)) && !(FROZEN_SPTE & NPT_P),
	       "a frozen SPTE is not present to the hardware walker");
_Static_assert(SPTE_PFN_MASK == (((1ull << 52) - 1) & ~0xfffull), "the PFN field is bits 51:12");
/* KVM's software bits stay clear of the hardware fields and of each other. */
_Static_assert(!((EPT_HOST_WRITABLE | EPT_MMU_WRITABLE | SPTE_MMU_PRESENT | (3ull << SPTE_TDP_AD_SHIFT) |
		  (7ull << SPTE_ACC_TRACK_SAVED_SHIFT)) & SPTE_PFN_MASK),
	       "EPT software bits outside the PFN field");
_Static_assert(SPTE_TDP_AD_SHIFT + 2 <= SPTE_ACC_TRACK_SAVED_SHIFT &&
	       SPTE_ACC_TRACK_SAVED_SHIFT + 3 <= 57 && EPT_HOST_WRITABLE == 1ull << 57 && EPT_MMU_WRITABLE == 1ull << 58,
	       "A/D type (53:52), saved access-track bits (56:54), host/MMU-writable (57, 58) do not overlap");
_Static_assert(!((NPT_HOST_WRITABLE | NPT_MMU_WRITABLE | SPTE_MMU_PRESENT) & (NPT_P | NPT_W | NPT_U | NPT_A | NPT_D | NPT_NX)) &&
	       NPT_HOST_WRITABLE != SPTE_MMU_PRESENT && NPT_MMU_WRITABLE != SPTE_MMU_PRESENT,
	       "NPT software bits live in the available bits 11:9");
_Static_assert(SPTE_W == EPT_W && SPTE_W == NPT_W && SPTE_PS == 1ull << 7, "W is bit 1 and PS bit 7 in both formats");
/* A table is 512 eight-byte entries: one 4 KiB page. */
_Static_assert(512 * sizeof(u64) == 4096, "a page table fills one 4 KiB frame");

void spte_masks_init(struct spte_masks *m, int fmt, bool ad, bool soft_ad)
{
	*m = (struct spte_masks){0};
	m->fmt = fmt;
	if (fmt == FMT_EPT) {
		/* kvm_mmu_set_ept_masks(): user = R, x = X, no nx; present mask is
		 * SVE (+R without exec-only support, which every TDP-capable CPU we
		 * model has). A and D: bits 8 and 9 when EPT A/D is enabled; without
		 * hardware A/D, 0 up to v6.12, and bits 8 and 9 as software bits since
		 * 3835819fb1b3 "KVM: x86/mmu: Set shadow_accessed_mask for EPT even if
		 * A/D bits disabled" and 53510b912518 "KVM: x86/mmu: Set shadow_dirty_mask
		 * for EPT even if A/D bits disabled" (v6.13). */
		m->ad = ad;
		m->soft_ad = !ad && soft_ad;
		m->present = EPT_SVE;
		m->user = EPT_R;
		m->x = EPT_X;
		m->nx = 0;
		m->accessed = ad || soft_ad ? EPT_A : 0;
		m->dirty = ad || soft_ad ? EPT_D : 0;
		m->host_writable = EPT_HOST_WRITABLE;
		m->mmu_writable = EPT_MMU_WRITABLE;
		m->memtype = (MT_WB << EPT_MT_SHIFT) | EPT_IPAT;
		m->acc_track = EPT_R | EPT_W | EPT_X;
		/* MMIO: W|X without R is an EPT misconfiguration (VMX_EPT_MISCONFIG_WX_VALUE;
		 * Intel SDM Vol. 3C "EPT Misconfigurations", 28.2.3.1 in the 2016 edition). */
		m->mmio_value = EPT_W | EPT_X;
		m->mmio_mask = EPT_R | EPT_W | EPT_X | EPT_SVE;
	} else {
		/* kvm_mmu_reset_all_pte_masks(): NPT always has hardware A/D. */
		m->ad = true;
		m->present = NPT_P;
		m->user = NPT_U;
		m->x = 0;
		m->nx = NPT_NX;
		m->accessed = NPT_A;
		m->dirty = NPT_D;
		m->host_writable = NPT_HOST_WRITABLE;
		m->mmu_writable = NPT_MMU_WRITABLE;
		m->memtype = 0;
		m->acc_track = 0;
		/* MMIO: reserved physical-address bit 51 with P set, so the walk faults with
		 * RSVD (kvm_mmu_reset_all_pte_masks(); AMD APM Vol. 2 15.25.6). */
		m->mmio_value = (1ull << 51) | NPT_P;
		m->mmio_mask = (1ull << 51) | NPT_P;
	}
}

bool is_mmio_spte(const struct spte_masks *m, u64 s)
{
	return (s & m->mmio_mask) == m->mmio_value && !is_shadow_present_pte(s);
}

bool spte_ad_enabled(u64 s) { return ((s >> SPTE_TDP_AD_SHIFT) & 3) == 0; }
bool is_writable_pte(u64 s) { return (s & SPTE_W) != 0; }
bool is_mmu_writable_spte(const struct spte_masks *m, u64 s) { return (s & m->mmu_writable) != 0; }

bool is_access_tracked_spte(const struct spte_masks *m, u64 s)
{
	/* An AD-disabled shadow-present SPTE whose RWX bits were stripped. */
	return m->fmt == FMT_EPT && is_shadow_present_pte(s) && !spte_ad_enabled(s) &&
	       (s & m->acc_track) == 0;
}

bool spte_is_accessed(const struct spte_masks *m, u64 s)
{
	/* is_accessed_spte(): an AD-disabled SPTE is young unless access-tracked, up
	 * to v6.12; since 7971801b5618 "KVM: x86/mmu: Use Accessed bit even when
	 * _hardware_ A/D bits are disabled" (v6.13) the A bit says it. */
	if (m->fmt == FMT_EPT && !spte_ad_enabled(s) && !m->soft_ad)
		return !is_access_tracked_spte(m, s);
	return (s & m->accessed) != 0;
}

bool is_access_allowed(const struct spte_masks *m, u64 s, bool write, bool exec)
{
	if (exec)
		return m->fmt == FMT_EPT ? (s & m->x) != 0 : !(s & m->nx);
	if (write)
		return is_writable_pte(s);
	return (s & 1) != 0;
}

u64 make_leaf_spte(const struct spte_masks *m, u64 pfn, int level, unsigned acc,
		   bool host_writable, bool write_fault, bool prefetch)
{
	(void)write_fault;
	u64 s = SPTE_MMU_PRESENT | m->present | m->memtype;
	bool ad = m->fmt == FMT_NPT || m->ad;

	if (!ad)
		s |= SPTE_TDP_AD_DISABLED;
	/* A and D below come from the masks, which are 0 for AD-disabled SPTEs up to
	 * v6.12 (m->soft_ad: 7971801b5618, and 85649117511d "KVM: x86/mmu: Set Dirty
	 * bit for new SPTEs, even if _hardware_ A/D bits are disabled", v6.13). */
	ad = ad || m->soft_ad;
	if (acc & ACC_USER)
		s |= m->user;
	if (acc & ACC_EXEC)
		s |= m->x;
	else
		s |= m->nx;
	if (level > 1)
		s |= SPTE_PS;
	if (ad && !prefetch)
		s |= m->accessed;
	if (host_writable)
		s |= m->host_writable;
	else
		acc &= ~ACC_WRITE; /* a read-only host mapping never yields W */
	if (acc & ACC_WRITE) {
		s |= SPTE_W | m->mmu_writable;
		/* make_spte(): D is set eagerly on every writable SPTE. */
		if (ad)
			s |= m->dirty;
	}
	s |= (pfn << 12) & SPTE_PFN_MASK;
	return s;
}

u64 make_nonleaf_spte(const struct spte_masks *m, u64 table_pfn)
{
	/* Non-leaf: present | W | U | X | A (A eagerly, so hardware never writes it). */
	u64 s = SPTE_MMU_PRESENT | m->present | SPTE_W | m->user | m->x;

	if (m->fmt == FMT_NPT || m->ad)
		s |= m->accessed;
	else
		s |= SPTE_TDP_AD_DISABLED;
	return s | ((table_pfn << 12) & SPTE_PFN_MASK);
}

u64 make_mmio_spte(const struct spte_masks *m, u64 gfn, u32 gen)
{
	/* make_mmio_spte() (mmu/spte.c): 19 generation bits in SPTE bits 3-10 (8 low
	 * bits) and 52-62 (11 high bits).
	 * For NPT bit 51 is the reserved-bit marker, so the gfn must stay below it. */
	u64 s = m->mmio_value; /* no SHADOW_NONPRESENT_VALUE: the MMIO mask covers SVE */

	s |= ((u64)(gen & 0xff)) << 3;
	s |= ((u64)((gen >> 8) & 0x7ff)) << 52;
	s |= (gfn << 12) & 0x0007fffffffff000ull;
	return s;
}

u64 make_small_spte(const struct spte_masks *m, u64 huge, int huge_level, int index)
{
	int child = huge_level - 1;
	u64 s = huge;

	(void)m;
	s &= ~SPTE_PFN_MASK;
	s |= (huge & SPTE_PFN_MASK) + (((u64)index * pages_per_level(child)) << 12);
	if (child == 1)
		s &= ~SPTE_PS;
	return s;
}

u64 make_huge_spte(const struct spte_masks *m, u64 small, int level)
{
	u64 mask = (pages_per_level(level) << 12) - 1;
	(void)m;
	return (small & ~(mask & SPTE_PFN_MASK)) | SPTE_PS;
}

u64 mark_spte_for_access_track(const struct spte_masks *m, u64 s)
{
	/* mark_spte_for_access_track() (mmu/spte.c): save R and X at bit 54/56
	 * (SHADOW_ACC_TRACK_SAVED_BITS_SHIFT), clear RWX (W is not saved). */
	u64 saved = s & (EPT_R | EPT_X);

	if (m->fmt != FMT_EPT || spte_ad_enabled(s))
		return s & ~m->accessed;
	if (is_access_tracked_spte(m, s))
		return s;
	s &= ~(m->acc_track | m->accessed);
	s |= saved << SPTE_ACC_TRACK_SAVED_SHIFT;
	return s;
}

u64 restore_acc_track_spte(const struct spte_masks *m, u64 s)
{
	u64 saved = (s >> SPTE_ACC_TRACK_SAVED_SHIFT) & (EPT_R | EPT_X);

	(void)m;
	s &= ~((EPT_R | EPT_X) << SPTE_ACC_TRACK_SAVED_SHIFT);
	return s | saved;
}

u64 make_spte_executable(const struct spte_masks *m, u64 s)
{
	/* make_spte_executable(): an access-tracked SPTE gets X in its saved bits. */
	bool tracked = is_access_tracked_spte(m, s);

	if (tracked)
		s = restore_acc_track_spte(m, s);
	s = (s & ~m->nx) | m->x;
	if (tracked)
		s = mark_spte_for_access_track(m, s);
	return s;
}

u32 mmio_spte_gen(u64 s)
{
	return (u32)(((s >> 3) & 0xff) | (((s >> 52) & 0x7ff) << 8));
}
