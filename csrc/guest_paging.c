/* guest_paging.c — guest page tables in guest memory and the two-dimensional walk
 * of a guest-linear access (guest_paging.h).
 *
 * The walk (Intel SDM Vol. 3C "EPT Translation Mechanism": every guest
 * paging-structure reference and the final guest-physical address go through EPT;
 * AMD APM Vol. 2 15.25 "Nested Paging" likewise through NPT): for each guest level
 * the entry's guest-physical address is translated through the guest-physical TLB,
 * its paging-structure caches and, on a miss, the EPT/NPT walk (cpu_access(), which
 * also takes EPT violations to KVM and checks the translation), then the entry is
 * read; the final guest-physical address is translated the same way with the
 * access's own rights. With every cache cold a 4-level guest over 4-level EPT makes
 * 4 x (4 + 1) + 4 = 24 references. */
#include <stdlib.h>
#include <string.h>
#include "vm.h"

/* ---------------------------------------------------------------- guest memory */

static inline u64 gm_hash(u64 gfn) { return (gfn * 0x9e3779b97f4a7c15ull) >> 17; }

u64 *guest_page_if_any(const struct guest_mem *m, u64 gfn)
{
	if (!m->cap)
		return NULL;
	for (u64 i = gm_hash(gfn) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->key[i])
			return NULL;
		if (m->key[i] == gfn + 1)
			return m->page[i];
	}
}

/* The page, created (zeroed) on first use; NULL: no host memory. */
u64 *guest_page(struct guest_mem *m, u64 gfn)
{
	u64 *p = guest_page_if_any(m, gfn);
	if (p)
		return p;
	if (2 * (m->used + 1) > m->cap) {
		u64 cap = m->cap ? 2 * m->cap : 64;
		u64 *key = calloc(cap, sizeof(u64));
		u64 **page = calloc(cap, sizeof(u64 *));
		if (!key || !page) {
			free(key);
			free(page);
			return NULL;
		}
		for (u64 i = 0; i < m->cap; i++) {
			if (!m->key[i])
				continue;
			u64 j = gm_hash(m->key[i] - 1) & (cap - 1);
			while (key[j])
				j = (j + 1) & (cap - 1);
			key[j] = m->key[i];
			page[j] = m->page[i];
		}
		free(m->key);
		free(m->page);
		m->key = key;
		m->page = page;
		m->cap = cap;
	}
	p = calloc(512, sizeof(u64));
	if (!p)
		return NULL;
	u64 i = gm_hash(gfn) & (m->cap - 1);
	while (m->key[i])
		i = (i + 1) & (m->cap - 1);
	m->key[i] = gfn + 1;
	m->page[i] = p;
	m->used++;
	return p;
}

void guest_mem_free(struct guest_mem *m)
{
	for (u64 i = 0; i < m->cap; i++)
		if (m->key[i])
			free(m->page[i]);
	free(m->key);
	free(m->page);
	memset(m, 0, sizeof(*m));
}

u64 guest_mem_digest(const struct guest_mem *m, u64 h, u64 (*mix)(u64, u64))
{
	/* Order-independent over the map's layout: a sum of per-entry hashes. */
	u64 s = 0;
	for (u64 i = 0; i < m->cap; i++)
		for (int k = 0; m->key[i] && k < 512; k++)
			if (m->page[i][k])
				s += mix(mix(m->key[i], (u64)k), m->page[i][k]);
	return s ? mix(h, s) : h;
}


/* ---------------------------------------------------------------- formats */


/* Reserved bits set in a present entry (SDM Vol. 3A 4.5: address bits at or above
 * MAXPHYADDR; PS in a PML5E/PML4E; the low address bits of a 2M/1G page's frame).
 * EFER.NXE is taken as set, so XD is not reserved. */
static bool gpte_reserved(const struct tdp_vm *vm, u64 pte, int level)
{
	u64 rsvd = ((1ull << 52) - 1) & ~((1ull << vm->cfg.maxphyaddr) - 1);
	if (pte & rsvd)
		return true;
	if (level >= 4)
		return (pte & GPTE_PS) != 0;
	if (level >= 2 && (pte & GPTE_PS))
		return (pte & (((1ull << (9 * (level - 1))) - 1) << 12) & ~(1ull << 12)) != 0; /* bit 12 is PAT */
	return false;
}

int guest_canonical(u64 gva, int levels)
{
	int bits = levels == 5 ? 57 : 48;
	int64_t s = (int64_t)(gva << (64 - bits)) >> (64 - bits);
	return (u64)s == gva;
}

/* A walk of the guest's tables in guest memory alone (no EPT, no caches, no A/D):
 * what the guest's tables say now. 0 and the translation, or -1 (not present or
 * reserved). */
int guest_translate(const struct tdp_vm *vm, u64 cr3_gfn, int levels, u64 gva, u64 *gpa, int *level,
		    unsigned *perms)
{
	u64 table = cr3_gfn;
	unsigned p = PERM_R | PERM_W | PERM_X;
	for (int l = levels; l >= 1; l--) {
		u64 pte = guest_pte(&vm->gmem, table, guest_index(gva, l));
		if (!(pte & GPTE_P) || gpte_reserved(vm, pte, l))
			return -1;
		if (!(pte & GPTE_RW))
			p &= ~(unsigned)PERM_W;
		if (pte & GPTE_XD)
			p &= ~(unsigned)PERM_X;
		if (l == 1 || (pte & GPTE_PS)) {
			u64 size = 1ull << (12 + 9 * (l - 1));
			*gpa = (guest_pte_addr(vm, pte) & ~(size - 1)) | (gva & (size - 1));
			*level = l;
			*perms = p;
			return 0;
		}
		table = guest_pte_addr(vm, pte) >> 12;
	}
	return -1;
}

/* ---------------------------------------------------------------- the 2D walk */

static unsigned guest_need(int access)
{
	return access == TDP_ACC_WRITE ? PERM_W : access == TDP_ACC_READ ? PERM_R : PERM_X;
}

/* #PF error code (SDM Vol. 3A 4.7): P, W/R, RSVD, I/D. Supervisor accesses. */
static u32 pf_error(bool present, int access, bool rsvd)
{
	return (present ? 1u : 0) | (access == TDP_ACC_WRITE ? 2u : 0) | (rsvd ? 8u : 0) |
	       (access == TDP_ACC_EXEC || access == TDP_ACC_EXEC_USER ? 16u : 0);
}

/* The combined-TLB space of the vCPU's current context: VMX (VPID, EP4TA of the
 * current root), SVM the ASID. */
static int guest_space(struct tdp_vm *vm, struct vcpu *v)
{
	struct ctlb *t = &vm->pcpus[v->pcpu].ctlb;
	if (vm->cfg.arch == TDP_SVM)
		return ctlb_space(t, ctlb_key_svm(v->asid), v->asid, 0);
	struct tdp_root *r = tdp_mmu_find_root(vm, v->root_id);
	u64 ep4ta = r ? hostmem_pfn(&vm->mem, r->frame) : 0;
	return ctlb_space(t, ctlb_key_vmx(v->vpid, ep4ta), v->vpid, ep4ta);
}

/* One guest-physical reference of the walk (a guest paging-structure entry, or the
 * final address): 1 if the access ended there (out->outcome says how), 0 to go
 * on, <0 on error. */
static int nested(struct tdp_vm *vm, struct vcpu *v, u64 gpa, int access, struct tdp_guest_access_result *out,
		  u64 *hpa)
{
	struct tdp_access_result o;
	int r = cpu_access(vm, v, gpa, access, &o, 0);
	if (r < 0)
		return r;
	out->refs += o.walk_refs;
	out->nested_refs += o.walk_refs;
	out->faults += o.faults;
	if (o.violation)
		out->violation = o.violation;
	if (o.outcome != TDP_OUT_OK) {
		out->outcome = o.outcome;
		return 1;
	}
	*hpa = o.hpa;
	return 0;
}

static int guest_pf(struct tdp_vm *vm, struct tdp_guest_access_result *out, bool present, int access, bool rsvd)
{
	out->outcome = TDP_OUT_GUEST_PF;
	out->pf_error = pf_error(present, access, rsvd);
	vm->stats[ST_guest_page_faults]++;
	return 0;
}

int guest_access(struct tdp_vm *vm, struct vcpu *v, u64 gva, int access, struct tdp_guest_access_result *out)
{
	struct guest_cpu *g = &v->g;
	unsigned need = guest_need(access);
	bool write = access == TDP_ACC_WRITE;
	u64 vpn = gva >> 12;

	memset(out, 0, sizeof(*out));
	int r = cpu_enter_if_kicked(vm, v);
	if (r)
		return r;
	struct pcpu *pc = &vm->pcpus[v->pcpu];
	int sp = guest_space(vm, v);
	if (sp < 0)
		return vm_err(vm, TDP_ENOMEM, "out of host memory for the combined TLB");
	u16 pcid = g->pcide ? (u16)(g->cr3 & 0xfff) : 0;
	vm->stats[ST_guest_accesses]++;
	struct ctlb_ent *e = ctlb_lookup(&pc->ctlb, sp, pcid, vpn);
	if (e && (e->perms & need) && (!write || e->dirty)) {
		u64 off = gva & 0xfff;
		vm->stats[ST_combined_hits]++;
		vm_cost(vm, vm->costs.tlb_hit);
		out->tlb_hit = 1;
		out->gpa = (e->gfn << 12) | off;
		out->hpa = (e->pfn << 12) | off;
		out->guest_level = e->glevel;
		/* The host side: does the guest-physical page still have this frame? */
		u64 tag = pc->tlb.ctx[pc->cur_ctx].key & ((1ull << 62) - 1);
		size_t before = vm->nviol;
		checker_check_translation(vm, v, out->gpa, access, e->pfn, 1, tag, 0);
		if (vm->nviol > before)
			out->violation = (int)vm->nviol;
		/* The guest side: do the guest's tables still give it? If not, the
		 * checker says who owes the flush. */
		u64 now_gpa;
		int lv;
		unsigned perms;
		if (guest_translate(vm, g->cr3 >> 12 & ((1ull << 40) - 1), g->levels, gva, &now_gpa, &lv, &perms) ||
		    now_gpa >> 12 != e->gfn || (perms & e->perms) != e->perms) {
			before = vm->nviol;
			if (checker_guest_stale(vm, v, out->gpa, access, e->pfn, e->gseq, tag))
				out->violation = (int)vm->nviol;
			else
				out->stale_guest = 1;
		}
		return 0;
	}
	vm->stats[ST_combined_misses]++;
	vm_cost(vm, vm->costs.tlb_miss);

	u64 table = (g->cr3 >> 12) & ((1ull << 40) - 1), gpa = 0, hpa;
	unsigned perms = PERM_R | PERM_W | PERM_X;
	int glevel = 0;
	bool global = false, dirty = false;
	for (int l = g->levels; l >= 1; l--) {
		u64 egpa = (table << 12) + 8 * (u64)guest_index(gva, l);
		if ((r = nested(vm, v, egpa, TDP_ACC_READ, out, &hpa)))
			return r < 0 ? r : 0;
		u64 pte = guest_pte(&vm->gmem, table, guest_index(gva, l));
		out->refs++;
		out->guest_refs++;
		vm->stats[ST_guest_walk_refs]++;
		vm_cost(vm, vm->costs.walk_ref);
		if (!(pte & GPTE_P) || gpte_reserved(vm, pte, l)) {
			if (e)
				ctlb_kill(e); /* a #PF drops the faulting address's entries (SDM 4.10.4.1) */
			return guest_pf(vm, out, pte & GPTE_P, access, pte & GPTE_P);
		}
		if (!(pte & GPTE_RW))
			perms &= ~(unsigned)PERM_W;
		if (pte & GPTE_XD)
			perms &= ~(unsigned)PERM_X;
		bool leaf = l == 1 || (pte & GPTE_PS);
		if (leaf && !(perms & need)) {
			if (e)
				ctlb_kill(e);
			return guest_pf(vm, out, true, access, false);
		}
		/* A in every entry used, D in the leaf for a write: a locked write to the
		 * guest's table, a write in the nested dimension (SDM Vol. 3C 29.3.3.2:
		 * guest paging-structure A/D updates are writes to guest-physical memory). */
		u64 nw = pte | GPTE_A | (leaf && write ? GPTE_D : 0);
		if (nw != pte) {
			if ((r = nested(vm, v, egpa, TDP_ACC_WRITE, out, &hpa)))
				return r < 0 ? r : 0;
			u64 *page = guest_page(&vm->gmem, table);
			if (!page)
				return vm_err(vm, TDP_ENOMEM, "out of host memory for guest memory");
			page[guest_index(gva, l)] = nw;
			vm->stats[ST_guest_ad_updates]++;
		}
		if (leaf) {
			u64 size = 1ull << (12 + 9 * (l - 1));
			gpa = (guest_pte_addr(vm, pte) & ~(size - 1)) | (gva & (size - 1));
			glevel = l;
			global = (pte & GPTE_G) != 0;
			dirty = (nw & GPTE_D) != 0;
			break;
		}
		table = guest_pte_addr(vm, pte) >> 12;
	}
	if ((r = nested(vm, v, gpa, access, out, &hpa)))
		return r < 0 ? r : 0;
	out->gpa = gpa;
	out->hpa = hpa;
	out->guest_level = glevel;
	/* The nested accesses may have re-entered the vCPU (a kick) and changed its
	 * root or ASID: fill under the context it has now. Rights: the guest's, as far
	 * as this walk proved them in the nested dimension too. */
	if ((sp = guest_space(vm, v)) < 0)
		return vm_err(vm, TDP_ENOMEM, "out of host memory for the combined TLB");
	unsigned proven = PERM_R | (write ? PERM_W : 0) | (need == PERM_X ? PERM_X : 0);
	ctlb_fill(&pc->ctlb, sp, pcid, vpn, hpa >> 12, gpa >> 12, perms & proven, global, dirty, glevel,
		  v->g.flush_req);
	vm->stats[ST_combined_fills]++;
	return 0;
}
