/* tlb_combined.h — one pCPU's TLB entries for guest-linear addresses while EPT/NPT
 * is on: "combined mappings" (Intel SDM Vol. 3C "Caching Translation Information",
 * 29.4.1 in recent editions: linear address -> host physical, tagged by VPID, PCID
 * and EP4TA, global entries by VPID and EP4TA only) and, on SVM, guest-virtual
 * entries tagged by ASID and PCID (AMD APM Vol. 2 15.16 "TLB Control").
 *
 * A tag is a "space": one (VPID, EP4TA) on VMX, one ASID on SVM. Every flush
 * the instructions need bumps an epoch — of a space (all its entries; its
 * non-global entries), of one PCID in a space, or of a space's huge-page
 * fragments — and an entry is alive only while the epochs it was filled under
 * still hold, so no flush scans the array. An individual-address flush reads the
 * one set its page hashes to.
 *
 * [MODEL CHOICE] Entries are 4K: a guest 2M/1G page, or a guest 4K page inside a
 * host huge page, is cached as the 4K fragment an access used (the SDM lets a
 * processor cache a smaller page than the translation maps). An individual-address
 * flush cannot know the size of the guest's page, so it drops, besides the
 * address's own 4K entries, every fragment of a guest huge page in the matching
 * spaces (the SDM lets any flush drop more than it must). No combined
 * paging-structure cache is kept: a miss walks every guest level, each guest
 * table reference going through the guest-physical TLB and caches (tlb.h). */
#ifndef TDPFAST_TLB_COMBINED_H
#define TDPFAST_TLB_COMBINED_H
#include "spte.h"
#include "tdpfast.h"

struct ctlb_ent {
	u64 vpn;      /* guest-linear page (gva >> 12) */
	u64 pfn;      /* host page */
	u64 gfn;      /* the guest-physical page the guest's tables gave */
	u32 space;    /* index into ctlb.sp */
	u32 ep_all, ep_ng, ep_pcid, ep_frag;
	u32 stamp;    /* LRU */
	u32 gseq;     /* the guest's paravirtual flush requests when it was filled (guest_cpu) */
	u16 pcid;
	u8 valid;
	u8 perms;     /* PERM_R/W/X: the rights of both dimensions that a walk proved */
	u8 global;    /* the guest's leaf had G (CR4.PGE assumed on) */
	u8 dirty;     /* the guest's D was set by or before the walk that filled it */
	u8 glevel;    /* the guest page's level (1: 4K) */
};

struct ctlb_space {
	u64 key;      /* ctlb_key_vmx() / ctlb_key_svm() */
	u32 id;       /* VPID (VMX) or ASID (SVM) */
	u64 ep4ta;    /* VMX: the EPT root's pfn; SVM: 0 */
	u32 ep_all;   /* every entry of the space */
	u32 ep_ng;    /* its non-global entries, every PCID */
	u32 ep_frag;  /* its fragments of guest huge pages */
	u32 *pcid_ep; /* 4096 per-PCID epochs of non-global entries (NULL until needed) */
};

#define CTLB_MAX_SPACES 256 /* tags kept at once; the 257th starts the table (and the TLB) again */

struct ctlb {
	u32 sets, ways;
	struct ctlb_ent *e;   /* NULL until the first fill */
	struct ctlb_space *sp;
	u32 nsp, sp_cap;
	u32 stamp;
	u64 fills;
};

static inline u64 ctlb_key_vmx(u32 vpid, u64 ep4ta_pfn) { return ((u64)vpid << 44) | ep4ta_pfn; }
static inline u64 ctlb_key_svm(u32 asid) { return (1ull << 63) | asid; }

void ctlb_init(struct ctlb *t, u32 sets, u32 ways);
void ctlb_destroy(struct ctlb *t);
/* The space with this key, created on first use (-1: no memory). Allocates the
 * array on the first call, so a VM that never uses guest paging keeps none. */
int ctlb_space(struct ctlb *t, u64 key, u32 id, u64 ep4ta);
/* The live entry for (space, pcid or a global one, vpn), or NULL. */
struct ctlb_ent *ctlb_lookup(struct ctlb *t, int space, u16 pcid, u64 vpn);
/* Replaces the entry for the same tag and page if there is one, else the set's
 * least recently used or dead way. */
void ctlb_fill(struct ctlb *t, int space, u16 pcid, u64 vpn, u64 pfn, u64 gfn, unsigned perms, bool global,
	      bool dirty, int glevel, u32 gseq);
void ctlb_kill(struct ctlb_ent *e);

/* Which spaces an invalidation reaches (the SDM's "current VPID, all EP4TAs",
 * "this EP4TA, all VPIDs", ...). */
enum ctlb_match { CTLB_ID = 0, CTLB_EP4TA = 1, CTLB_ALL = 2, CTLB_ALL_BUT_ID0 = 3 };
/* Entries for page vpn in the matching spaces: for one PCID (pcid >= 0; any
 * PCID if -1); globals too if globals. Also every huge-page fragment there. */
void ctlb_flush_addr(struct ctlb *t, int match, u64 key_value, int pcid, bool globals, u64 vpn);
/* Non-global entries of one PCID in the matching spaces. */
void ctlb_flush_pcid(struct ctlb *t, int match, u64 key_value, u16 pcid);
/* Every entry (globals too if globals) of the matching spaces. */
void ctlb_flush_spaces(struct ctlb *t, int match, u64 key_value, bool globals);
u64 ctlb_live_entries(const struct ctlb *t);
size_t ctlb_dump(const struct ctlb *t, struct tdp_combined_entry *out, size_t max);
u64 ctlb_digest(const struct ctlb *t, u64 h, u64 (*mix)(u64, u64));

#endif
