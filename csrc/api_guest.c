/* api_guest.c — the public entry points of guest paging (tdpfast.h): building the
 * guest's page tables, its paging mode and CR3, guest-linear accesses and the
 * guest's own TLB flushes. Arguments are checked before anything changes; every
 * successful call is logged for replay. */
#include <string.h>
#include "vm.h"

static int check_levels(tdp_vm *vm, int levels)
{
	if (levels != 4 && levels != 5)
		return vm_err(vm, TDP_EINVAL, "guest paging levels must be 4 or 5 (CR4.LA57), got %d", levels);
	return 0;
}

static int check_gva(tdp_vm *vm, u64 gva, int levels)
{
	if (!guest_canonical(gva, levels))
		return vm_err(vm, TDP_EINVAL, "gva 0x%llx is not canonical for %d-level paging",
			      (unsigned long long)gva, levels);
	return 0;
}

static int check_table(tdp_vm *vm, u64 gfn)
{
	return vm_check_gfn(vm, "table gfn", gfn);
}

static int check_index(tdp_vm *vm, int index)
{
	if (index < 0 || index > 511)
		return vm_err(vm, TDP_EINVAL, "a page-table index is 0..511, got %d", index);
	return 0;
}

/* Frames a 2D walk may need: each guest level's read and A/D write, and the final
 * address, may each fault. */
static u64 walk_frames(tdp_vm *vm, const struct vcpu *v)
{
	return (u64)(2 * v->g.levels + 1) * (u64)tdp_fault_frames(vm->cfg.levels);
}

static int check_paging(tdp_vm *vm, int vcpu)
{
	if (!vm->vcpus[vcpu].g.levels)
		return vm_err(vm, TDP_ESTATE, "vcpu %d has guest paging off: call guest set_paging(%d, 4) first", vcpu,
			      vcpu);
	return 0;
}

/* The current space's id for the guest's own instructions: they act on the
 * current VPID (every EP4TA; Intel SDM Vol. 3C 29.4.3.1) or the current ASID. */
static u64 cur_id(tdp_vm *vm, struct vcpu *v) { return vm->cfg.arch == TDP_SVM ? v->asid : v->vpid; }

static u16 cur_pcid(struct vcpu *v) { return v->g.pcide ? (u16)(v->g.cr3 & 0xfff) : 0; }

/* ---------------------------------------------------------------- the guest's tables */

int tdp_guest_set_pt_pool(tdp_vm *vm, uint64_t start_gfn, uint64_t npages)
{
	int r;
	VM_OP_BEGIN(vm);
	if (!npages)
		return vm_err(vm, TDP_EINVAL, "the page-table pool needs at least one page");
	if ((r = vm_check_range(vm, start_gfn, start_gfn + npages)))
		return r;
	vm->gmem.pool_next = start_gfn;
	vm->gmem.pool_end = start_gfn + npages;
	vm_log(vm, EV_GUEST_PT_POOL, start_gfn, npages, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

static int pool_take(tdp_vm *vm, u64 *gfn)
{
	struct guest_mem *m = &vm->gmem;
	if (m->pool_next >= m->pool_end)
		return vm_err(vm, TDP_ESTATE,
			      m->pool_end ? "the guest page-table pool is used up (set_table_pool() gives it more pages)"
					  : "no guest page-table pool: call set_table_pool(start_gfn, npages) first");
	*gfn = m->pool_next++;
	return 0;
}

int tdp_guest_new_table(tdp_vm *vm, uint64_t *gfn)
{
	int r;
	VM_OP_BEGIN(vm);
	u64 g = 0;
	if ((r = pool_take(vm, &g)))
		return r;
	u64 *page = guest_page(&vm->gmem, g);
	if (!page) {
		vm->gmem.pool_next--;
		return vm_err(vm, TDP_ENOMEM, "out of host memory for guest memory");
	}
	memset(page, 0, 4096); /* a page-table page starts empty */
	*gfn = g;
	vm_log(vm, EV_GUEST_NEW_TABLE, 0, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_guest_map(tdp_vm *vm, uint64_t cr3_gfn, int levels, uint64_t gva, uint64_t gpa, int level, uint32_t flags)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = check_table(vm, cr3_gfn)) || (r = check_levels(vm, levels)) || (r = check_gva(vm, gva, levels)))
		return r;
	if (level < 1 || level > 3)
		return vm_err(vm, TDP_EINVAL, "guest page level must be 1 (4K), 2 (2M) or 3 (1G), got %d", level);
	u64 size = 1ull << (12 + 9 * (level - 1));
	if ((gva | gpa) & (size - 1))
		return vm_err(vm, TDP_EINVAL, "gva 0x%llx and gpa 0x%llx must be aligned to the %s page",
			      (unsigned long long)gva, (unsigned long long)gpa, level == 1 ? "4K" : level == 2 ? "2M" : "1G");
	if (gpa >> vm->cfg.maxphyaddr)
		return vm_err(vm, TDP_EINVAL, "gpa 0x%llx is beyond MAXPHYADDR=%d", (unsigned long long)gpa,
			      vm->cfg.maxphyaddr);
	if (flags & ~63u)
		return vm_err(vm, TDP_EINVAL, "unknown guest PTE flags 0x%x", flags);
	/* First find what is missing (and whether a huge leaf is in the way), so that a
	 * call that cannot finish changes nothing. */
	u64 table = cr3_gfn;
	int need = 0;
	for (int l = levels; l > level; l--) {
		u64 pte = guest_pte(&vm->gmem, table, guest_index(gva, l));
		if (!(pte & GPTE_P)) {
			need = l - level;
			break;
		}
		if (l <= 3 && (pte & GPTE_PS))
			return vm_err(vm, TDP_ESTATE, "gva 0x%llx is inside a guest %s page already mapped at level %d",
				      (unsigned long long)gva, l == 3 ? "1G" : "2M", l);
		table = guest_pte_addr(vm, pte) >> 12;
	}
	if (need && !vm->gmem.pool_end)
		return vm_err(vm, TDP_ESTATE, "no guest page-table pool: call set_table_pool(start_gfn, npages) first");
	if (vm->gmem.pool_end - vm->gmem.pool_next < (u64)need)
		return vm_err(vm, TDP_ESTATE, "the guest page-table pool has %llu page(s) left, this mapping needs %d",
			      (unsigned long long)(vm->gmem.pool_end - vm->gmem.pool_next), need);
	/* Reserve guest memory for every page written, then write. */
	if (!guest_page(&vm->gmem, cr3_gfn) || !guest_page(&vm->gmem, table))
		return vm_err(vm, TDP_ENOMEM, "out of host memory for guest memory");
	for (int k = 0; k < need; k++)
		if (!guest_page(&vm->gmem, vm->gmem.pool_next + (u64)k))
			return vm_err(vm, TDP_ENOMEM, "out of host memory for guest memory");
	table = cr3_gfn;
	for (int l = levels; l > level; l--) {
		u64 *page = guest_page(&vm->gmem, table);
		u64 pte = page[guest_index(gva, l)];
		if (!(pte & GPTE_P)) {
			u64 t = vm->gmem.pool_next++;
			memset(guest_page(&vm->gmem, t), 0, 4096);
			/* Linux's _PAGE_TABLE: present, writable, user, accessed. */
			pte = (t << 12) | GPTE_P | GPTE_RW | GPTE_US | GPTE_A;
			page[guest_index(gva, l)] = pte;
		}
		table = guest_pte_addr(vm, pte) >> 12;
	}
	u64 leaf = gpa | GPTE_P | (level > 1 ? GPTE_PS : 0) | ((flags & TDP_GPTE_WRITE) ? GPTE_RW : 0) |
		   ((flags & TDP_GPTE_NX) ? GPTE_XD : 0) | ((flags & TDP_GPTE_GLOBAL) ? GPTE_G : 0) |
		   ((flags & TDP_GPTE_ACCESSED) ? GPTE_A : 0) | ((flags & TDP_GPTE_DIRTY) ? GPTE_D : 0) |
		   ((flags & TDP_GPTE_USER) ? GPTE_US : 0);
	guest_page(&vm->gmem, table)[guest_index(gva, level)] = leaf;
	vm_log(vm, EV_GUEST_MAP, cr3_gfn, (u64)levels, gva, gpa, (u64)level | ((u64)flags << 8));
	vm_op_end(vm);
	return 0;
}

int tdp_guest_unmap(tdp_vm *vm, uint64_t cr3_gfn, int levels, uint64_t gva, int *was_present)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = check_table(vm, cr3_gfn)) || (r = check_levels(vm, levels)) || (r = check_gva(vm, gva, levels)))
		return r;
	*was_present = 0;
	u64 table = cr3_gfn;
	for (int l = levels; l >= 1; l--) {
		u64 *page = guest_page_if_any(&vm->gmem, table);
		u64 pte = page ? page[guest_index(gva, l)] : 0;
		if (!(pte & GPTE_P))
			break;
		if (l == 1 || (l <= 3 && (pte & GPTE_PS))) {
			page[guest_index(gva, l)] = 0; /* no flush: that is the guest's to do */
			*was_present = 1;
			break;
		}
		table = guest_pte_addr(vm, pte) >> 12;
	}
	vm_log(vm, EV_GUEST_UNMAP, cr3_gfn, (u64)levels, gva, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_guest_write_pte(tdp_vm *vm, uint64_t table_gfn, int index, uint64_t value)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = check_table(vm, table_gfn)) || (r = check_index(vm, index)))
		return r;
	u64 *page = guest_page(&vm->gmem, table_gfn);
	if (!page)
		return vm_err(vm, TDP_ENOMEM, "out of host memory for guest memory");
	page[index] = value;
	vm_log(vm, EV_GUEST_WRITE_PTE, table_gfn, (u64)index, value, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_guest_read_pte(tdp_vm *vm, uint64_t table_gfn, int index, uint64_t *value)
{
	int r;
	if ((r = check_table(vm, table_gfn)) || (r = check_index(vm, index)))
		return r;
	*value = guest_pte(&vm->gmem, table_gfn, index);
	return 0;
}

int tdp_guest_translate(tdp_vm *vm, uint64_t cr3_gfn, int levels, uint64_t gva, uint64_t *gpa, int *level,
			uint32_t *perms)
{
	int r;
	unsigned p;
	if ((r = check_table(vm, cr3_gfn)) || (r = check_levels(vm, levels)) || (r = check_gva(vm, gva, levels)))
		return r;
	if (guest_translate(vm, cr3_gfn, levels, gva, gpa, level, &p))
		return vm_err(vm, TDP_ENOENT, "the guest's tables at gfn 0x%llx do not map gva 0x%llx",
			      (unsigned long long)cr3_gfn, (unsigned long long)gva);
	*perms = p;
	return 0;
}

/* ---------------------------------------------------------------- the vCPU's paging */

int tdp_guest_set_paging(tdp_vm *vm, int vcpu, int levels, int pcide)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_in_guest(vm, vcpu)))
		return r;
	if (levels != 0 && (r = check_levels(vm, levels)))
		return r;
	if (pcide != 0 && pcide != 1)
		return vm_err(vm, TDP_EINVAL, "pcide must be 0 or 1, got %d", pcide);
	struct vcpu *v = &vm->vcpus[vcpu];
	if ((r = cpu_enter_if_kicked(vm, v)))
		return r;
	/* A paging-mode change (CR0.PG, CR4.LA57/PCIDE) flushes every entry of the
	 * current VPID or ASID, globals too, as a CR4.PGE change does (Intel SDM Vol. 3A
	 * 4.10.4.1; AMD APM Vol. 2 15.16). */
	ctlb_flush_spaces(&vm->pcpus[v->pcpu].ctlb, CTLB_ID, cur_id(vm, v), true);
	if (!pcide)
		v->g.cr3 &= ~0xfffull;
	v->g.levels = (u8)levels;
	v->g.pcide = (u8)pcide;
	vm->stats[ST_guest_flushes]++;
	vm_log(vm, EV_GUEST_SET_PAGING, (u64)vcpu, (u64)levels, (u64)pcide, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_guest_load_cr3(tdp_vm *vm, int vcpu, uint64_t value)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_in_guest(vm, vcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	bool noflush = (value >> 63) & 1;
	u64 cr3 = value & ~(1ull << 63);
	if (noflush && !v->g.pcide)
		return vm_err(vm, TDP_EINVAL, "MOV to CR3 with bit 63 set needs CR4.PCIDE=1 (#GP)");
	if ((cr3 >> 12) >> (vm->cfg.maxphyaddr - 12))
		return vm_err(vm, TDP_EINVAL, "CR3 0x%llx sets bits beyond MAXPHYADDR=%d (#GP)",
			      (unsigned long long)cr3, vm->cfg.maxphyaddr);
	if ((r = cpu_enter_if_kicked(vm, v)))
		return r;
	if (!v->g.pcide)
		cr3 &= ~0xfffull; /* PWT/PCD: no PCID */
	/* MOV to CR3 (Intel SDM Vol. 3A 4.10.4.1): PCIDE=0 drops the non-global
	 * entries of PCID 0; PCIDE=1 those of the new PCID unless bit 63 is set. On SVM
	 * the same within the current ASID (AMD APM Vol. 2 15.16). */
	if (!noflush) {
		ctlb_flush_pcid(&vm->pcpus[v->pcpu].ctlb, CTLB_ID, cur_id(vm, v), (u16)(cr3 & 0xfff));
		vm->stats[ST_guest_flushes]++;
	}
	v->g.cr3 = cr3;
	vm_log(vm, EV_GUEST_LOAD_CR3, (u64)vcpu, value, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_guest_access(tdp_vm *vm, int vcpu, uint64_t gva, int access, struct tdp_guest_access_result *out)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_in_guest(vm, vcpu)) || (r = check_paging(vm, vcpu)))
		return r;
	if (access < 0 || access > 3)
		return vm_err(vm, TDP_EINVAL, "access must be 'r', 'w', 'x' or 'xu'");
	struct vcpu *v = &vm->vcpus[vcpu];
	if ((r = check_gva(vm, gva, v->g.levels)))
		return r;
	u64 frames = walk_frames(vm, v);
	if (hostmem_available(&vm->mem) < frames)
		return vm_err(vm, TDP_ENOMEM, "frame pool exhausted: a 2D walk could need %llu frames, %llu available",
			      (unsigned long long)frames, (unsigned long long)hostmem_available(&vm->mem));
	if ((r = guest_access(vm, v, gva, access, out)))
		return r;
	vm_log(vm, EV_GUEST_ACCESS, (u64)vcpu, gva, (u64)access, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_guest_access_batch(tdp_vm *vm, int vcpu, const uint64_t *gvas, const uint8_t *accesses, int default_access,
			   size_t n, uint64_t *counts, size_t *done)
{
	int r;
	*done = 0;
	memset(counts, 0, TDP_GBATCH_NCOUNTS * sizeof(*counts));
	VM_OP_BEGIN(vm);
	if ((r = vm_check_in_guest(vm, vcpu)) || (r = check_paging(vm, vcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	/* Every argument first: a batch that cannot run changes nothing. */
	for (size_t i = 0; i < n; i++) {
		int acc = accesses ? accesses[i] : default_access;
		if (acc < 0 || acc > 3)
			return vm_err(vm, TDP_EINVAL, "access[%zu] must be 0..3 (r, w, x, xu), got %d", i, acc);
		if (!guest_canonical(gvas[i], v->g.levels))
			return vm_err(vm, TDP_EINVAL, "gvas[%zu] = 0x%llx is not canonical for %d-level paging", i,
				      (unsigned long long)gvas[i], v->g.levels);
	}
	u64 frames = walk_frames(vm, v);
	size_t i;
	for (i = 0; i < n; i++) {
		if (hostmem_available(&vm->mem) < frames) {
			/* Stopped, not failed: the accesses that ran stay (done < n says so). */
			vm_err(vm, TDP_ENOMEM, "frame pool exhausted after %zu of %zu accesses", i, n);
			break;
		}
		struct tdp_guest_access_result out;
		int acc = accesses ? accesses[i] : default_access;
		if ((r = guest_access(vm, v, gvas[i], acc, &out)))
			break;
		/* Each access is its own event in the log (when the VM records). */
		vm_log(vm, EV_GUEST_ACCESS, (u64)vcpu, gvas[i], (u64)acc, 0, 0);
		counts[out.outcome == TDP_OUT_OK ? TDP_GBATCH_OK
			: out.outcome == TDP_OUT_GUEST_PF ? TDP_GBATCH_GUEST_PF : TDP_GBATCH_OTHER]++;
		counts[out.tlb_hit ? TDP_GBATCH_COMBINED_HITS : TDP_GBATCH_WALKED]++;
		counts[TDP_GBATCH_REFS] += (u64)out.refs;
		counts[TDP_GBATCH_FAULTS] += (u64)out.faults;
		counts[TDP_GBATCH_STALE_GUEST] += (u64)out.stale_guest;
		counts[TDP_GBATCH_VIOLATIONS] += out.violation != 0;
	}
	*done = i;
	vm_op_end(vm);
	return r;
}

int tdp_guest_invlpg(tdp_vm *vm, int vcpu, uint64_t gva)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_in_guest(vm, vcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	if ((r = cpu_enter_if_kicked(vm, v)))
		return r;
	/* INVLPG: the page's entries of the current VPID/ASID and PCID, its global
	 * entries of any PCID, every EP4TA (Intel SDM Vol. 3C 29.4.3.1). A
	 * non-canonical address is a no-op. */
	if (guest_canonical(gva, v->g.levels ? v->g.levels : 4))
		ctlb_flush_addr(&vm->pcpus[v->pcpu].ctlb, CTLB_ID, cur_id(vm, v), cur_pcid(v), true, gva >> 12);
	vm->stats[ST_guest_flushes]++;
	vm_log(vm, EV_GUEST_INVLPG, (u64)vcpu, gva, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_guest_invpcid(tdp_vm *vm, int vcpu, int type, uint32_t pcid, uint64_t gva)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_in_guest(vm, vcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	if (type < TDP_INVPCID_ADDRESS || type > TDP_INVPCID_ALL_EXCEPT_GLOBALS)
		return vm_err(vm, TDP_EINVAL, "INVPCID type must be 0..3, got %d (#GP)", type);
	if (type <= TDP_INVPCID_SINGLE_CONTEXT) {
		if (pcid > 0xfff)
			return vm_err(vm, TDP_EINVAL, "INVPCID: pcid must fit in 12 bits, got %u (#GP)", pcid);
		if (!v->g.pcide && pcid)
			return vm_err(vm, TDP_EINVAL, "INVPCID: pcid %u with CR4.PCIDE=0 (#GP)", pcid);
	}
	if (type == TDP_INVPCID_ADDRESS && !guest_canonical(gva, v->g.levels ? v->g.levels : 4))
		return vm_err(vm, TDP_EINVAL, "INVPCID individual-address: gva 0x%llx is not canonical (#GP)",
			      (unsigned long long)gva);
	if ((r = cpu_enter_if_kicked(vm, v)))
		return r;
	/* Intel SDM Vol. 2A "INVPCID", and Vol. 3C 29.4.3.1: the current VPID only. */
	struct ctlb *ct = &vm->pcpus[v->pcpu].ctlb;
	u64 id = cur_id(vm, v);
	switch (type) {
	case TDP_INVPCID_ADDRESS: ctlb_flush_addr(ct, CTLB_ID, id, (int)pcid, false, gva >> 12); break;
	case TDP_INVPCID_SINGLE_CONTEXT: ctlb_flush_pcid(ct, CTLB_ID, id, (u16)pcid); break;
	case TDP_INVPCID_ALL_INCLUDING_GLOBALS: ctlb_flush_spaces(ct, CTLB_ID, id, true); break;
	default: ctlb_flush_spaces(ct, CTLB_ID, id, false); break;
	}
	vm->stats[ST_guest_flushes]++;
	vm_log(vm, EV_GUEST_INVPCID, (u64)vcpu, (u64)type, pcid, gva, 0);
	vm_op_end(vm);
	return 0;
}

/* The guest's paravirtual TLB flush of a preempted vCPU (KVM_FEATURE_PV_TLB_FLUSH): the
 * guest sets KVM_VCPU_FLUSH_TLB in that vCPU's steal-time record instead of sending it an
 * IPI, and KVM's record_steal_time() turns it into KVM_REQ_TLB_FLUSH_GUEST at the vCPU's
 * next entry (x86.c). A running vCPU flushes itself (INVLPG, MOV to CR3). */
int tdp_guest_pv_flush(tdp_vm *vm, int vcpu)
{
	int r;
	VM_OP_BEGIN(vm);
	if ((r = vm_check_vcpu(vm, vcpu)))
		return r;
	struct vcpu *v = &vm->vcpus[vcpu];
	if (v->mode != TDP_OUTSIDE_GUEST)
		return vm_err(vm, TDP_ESTATE, "vcpu %d is running: the guest flushes a running vCPU by IPI (its own "
			      "INVLPG or MOV to CR3); the paravirtual flush is for a preempted one", vcpu);
	if (!v->g.levels)
		return vm_err(vm, TDP_ESTATE, "vcpu %d has guest paging off", vcpu);
	v->g.flush_req++;
	/* record_steal_time() at the next entry; made now, which is the same: the vCPU
	 * does not run before then. */
	if (FLUSH_SITE(vm, PV_FLUSH))
		v->requests |= TDP_REQ_TLB_FLUSH_GUEST;
	vm_log(vm, EV_GUEST_PV_FLUSH, (u64)vcpu, 0, 0, 0, 0);
	vm_op_end(vm);
	return 0;
}

int tdp_combined_dump(tdp_vm *vm, int pcpu, struct tdp_combined_entry *out, size_t max, size_t *n)
{
	int r;
	if ((r = vm_check_pcpu(vm, pcpu)))
		return r;
	*n = ctlb_dump(&vm->pcpus[pcpu].ctlb, out, max);
	return 0;
}
