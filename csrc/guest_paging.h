/* guest_paging.h — the guest's own paging: its page tables in guest memory, each
 * vCPU's CR3/PCID and paging mode, the two-dimensional walk of a guest-linear
 * access (every guest paging-structure reference translated through EPT/NPT), the
 * combined TLB entries it fills (tlb_combined.h) and the guest's own flushes
 * (INVLPG, INVPCID, MOV to CR3, paging-mode changes).
 *
 * Formats: 4-level and 5-level IA-32e paging, Intel SDM Vol. 3A 4.5 (AMD APM Vol. 2
 * 5.3 is the same format): P bit 0, R/W 1, U/S 2, A 5, D 6, PS 7 (levels 2 and 3),
 * G 8 (leaves), address bits 51:12, XD 63. */
#ifndef TDPFAST_GUEST_PAGING_H
#define TDPFAST_GUEST_PAGING_H
#include "spte.h"
#include "tdpfast.h"

enum {
	GPTE_P = 1ull << 0, GPTE_RW = 1ull << 1, GPTE_US = 1ull << 2, GPTE_A = 1ull << 5, GPTE_D = 1ull << 6,
	GPTE_PS = 1ull << 7, GPTE_G = 1ull << 8
};
#define GPTE_XD (1ull << 63)

/* Guest memory, as far as the model reads it: the pages that hold guest page
 * tables, by gfn (an open-addressing map; a page never written reads as zeros). */
struct guest_mem {
	u64 *key;      /* gfn + 1; 0: empty slot */
	u64 **page;    /* 512 entries each */
	u64 cap, used;
	u64 pool_next, pool_end; /* where tdp_guest_new_table() takes pages */
};

/* One vCPU's paging state (CR0.PG, CR4.LA57/PCIDE, CR3). */
struct guest_cpu {
	u64 cr3;       /* bits 51:12 the top table, 11:0 the PCID when pcide */
	u8 levels;     /* 0: paging off (accesses are guest-physical), 4 or 5 */
	u8 pcide;
	/* The guest's paravirtual flushes (KVM_VCPU_FLUSH_TLB, tdp_guest_pv_flush()): how
	 * many it asked for, and the number of the last one KVM serviced. A combined
	 * entry filled before a serviced one must be gone (checker_guest_stale()). */
	u32 flush_req, flush_done;
};

struct tdp_vm;
struct vcpu;
/* The page of guest memory at gfn, or NULL if never written; guest_page() creates
 * it (zeroed; NULL: no host memory). */
u64 *guest_page_if_any(const struct guest_mem *m, u64 gfn);
u64 *guest_page(struct guest_mem *m, u64 gfn);
static inline u64 guest_pte(const struct guest_mem *m, u64 gfn, int idx)
{
	const u64 *p = guest_page_if_any(m, gfn);
	return p ? p[idx] : 0;
}
static inline int guest_index(u64 gva, int level) { return (int)((gva >> (12 + 9 * (level - 1))) & 511); }
/* Address bits 51:12 of an entry, below MAXPHYADDR. */
static inline u64 guest_pte_addr_bits(u64 pte, int maxphyaddr) { return pte & (((1ull << maxphyaddr) - 1) & ~0xfffull); }
#define guest_pte_addr(vm, pte) guest_pte_addr_bits((pte), (vm)->cfg.maxphyaddr)
/* Whether gva is canonical for 4- or 5-level paging. */
int guest_canonical(u64 gva, int levels);
/* The guest's tables alone (no EPT, no caches, no A/D): 0 and the translation, or
 * -1 (not present, or a reserved bit). */
int guest_translate(const struct tdp_vm *vm, u64 cr3_gfn, int levels, u64 gva, u64 *gpa, int *level,
		    unsigned *perms);
void guest_mem_free(struct guest_mem *m);
u64 guest_mem_digest(const struct guest_mem *m, u64 h, u64 (*mix)(u64, u64));
int guest_access(struct tdp_vm *vm, struct vcpu *v, u64 gva, int access, struct tdp_guest_access_result *out);

#endif
