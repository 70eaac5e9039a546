"""vCPUs on physical CPUs: KVM's requests and remote flushes (virt/kvm/kvm_main.c, x86.c),
the vendor flush primitives (VMX INVEPT/INVVPID, SVM TLB_CONTROL and ASIDs), vCPU entry
and migration, and guest accesses through the TLB, the paging-structure caches and the
hardware walk -- with the checker (:mod:`.checker`) at the end of every access.  KVM's
names are those of virt/kvm/kvm_main.c, arch/x86/kvm/x86.c, vmx/vmx.c and svm/svm.c; SDM
section numbers are those of the 2016 Intel SDM Vol. 3C, APM is AMD64 APM Vol. 2.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._native import c_names, lib
from ..errors import FramePoolExhausted
from . import checker, hostmem, mmu, page_walker, tdp_mmu
from .spte import (MMIO_GEN_MASK, MT_WB, PERM_ALL, PERM_R, PERM_W, PERM_X, PERM_XU, PFN_MASK,
                   is_mmio_spte, mmio_spte_gen, pages_per_level, spte_hw_perms)
from .tlb import TLB, asid_context, ept_context

U64 = (1 << 64) - 1

# vCPU modes and requests (include/linux/kvm_host.h, arch/x86/include/asm/kvm_host.h).
# The codes are the binding's (enum tdp_vcpu_mode, enum tdp_request): the reference model
# speaks the engine's interface, so both VMs' event logs and results compare as they are.
OUTSIDE_GUEST, IN_GUEST, EXITING_GUEST = lib.TDP_OUTSIDE_GUEST, lib.TDP_IN_GUEST, lib.TDP_EXITING_GUEST
REQ_TLB_FLUSH, REQ_TLB_FLUSH_CURRENT = lib.TDP_REQ_TLB_FLUSH, lib.TDP_REQ_TLB_FLUSH_CURRENT
REQ_TLB_FLUSH_GUEST = lib.TDP_REQ_TLB_FLUSH_GUEST
REQ_MMU_FREE_OBSOLETE_ROOTS, REQ_LOAD_MMU_PGD = lib.TDP_REQ_MMU_FREE_OBSOLETE_ROOTS, lib.TDP_REQ_LOAD_MMU_PGD
REQUESTS = {name: bit for bit, name in c_names(lib.tdp_request_name, (1 << i for i in range(32))).items()}

# SVM VMCB TLB_CONTROL values (arch/x86/include/asm/svm.h; APM 15.16.1, "TLB Flush").
TLB_CONTROL_DO_NOTHING, TLB_CONTROL_FLUSH_ALL_ASID = 0, 1
TLB_CONTROL_FLUSH_ASID, TLB_CONTROL_FLUSH_ASID_LOCAL = 3, 7

# Access outcomes.
OUT_OK, OUT_MMIO, OUT_LIVELOCK, OUT_BLOCKED = lib.TDP_OUT_OK, lib.TDP_OUT_MMIO, lib.TDP_OUT_LIVELOCK, lib.TDP_OUT_BLOCKED
MAX_FAULT_RETRIES = 8


@dataclass
class Vcpu:
    id: int
    vpid: int
    mode: int = OUTSIDE_GUEST
    pcpu: int = -1              # where it is loaded (-1: never)
    vmcs_cpu: int = -1          # loaded_vmcs->cpu / current_vmcb->cpu
    root_id: int = 0            # mmu->root (0: INVALID_PAGE)
    requests: int = 0
    asid: int = 0               # SVM: vmcb->control.asid
    asid_generation: int = 0    # SVM: the VMCB's asid_generation
    tlb_control: int = TLB_CONTROL_DO_NOTHING


@dataclass
class Pcpu:
    tlb: TLB
    min_asid: int
    max_asid: int
    vcpu: int = -1              # vCPU in guest mode here
    cur_ctx: int = 0            # TLB context of that vCPU
    # svm_cpu_init(): generation 1, next_asid past the end, so the first VMRUN on each
    # pCPU bumps the generation and flushes every ASID (new_asid()).
    asid_generation: int = 1
    next_asid: int = 0

    def __post_init__(self):
        self.next_asid = self.max_asid + 1


# ============================================================================ remote flushes (kvm_main.c)
def kvm_make_all_cpus_request(vm, req: int) -> None:
    """Set the request on every vCPU; those in guest mode go IN_GUEST -> EXITING and get
    an IPI (the requests used here have WAIT semantics)."""
    for v in vm.vcpus:
        v.requests |= req
        if v.mode == IN_GUEST:
            v.mode = EXITING_GUEST
            vm.stats["ipis"] += 1
            vm.stats["vm_exits"] += 1
            vm.cost("ipi")
            vm.cost("vm_exit")


def kvm_flush_remote_tlbs(vm) -> None:
    vm.stats["remote_tlb_flush_requests"] += 1
    vm.cost("remote_flush")   # the requester's side: set the request everywhere, wait for acks
    kvm_make_all_cpus_request(vm, REQ_TLB_FLUSH)
    vm.stats["remote_tlb_flush"] += 1


def kvm_flush_remote_tlbs_range(vm, gfn: int, npages: int) -> None:
    """kvm_flush_remote_tlbs_range(): on bare metal a full remote flush (only the Hyper-V
    hook, hyperv_flush_guest_mapping_range(), honours the range).  With
    ``precise_range_flush`` the hypervisor below flushes just the GPA range on every
    pCPU, without requests or IPIs (Hyper-V style; [MODEL CHOICE] in every context)."""
    if not vm.pol.precise_range_flush:
        kvm_flush_remote_tlbs(vm)
        return
    vm.stats["remote_tlb_flush_requests"] += 1
    vm.stats["range_flushes"] += 1
    for p in vm.pcpus:
        p.tlb.flush_range(gfn, npages)
    vm.cost("flush_range_page", min(npages, 4096))


# ============================================================================ vendor primitives
def cpu_eptp(vm, root_frame: int) -> int:
    """construct_eptp() (vmx/vmx.c): WB, page-walk length - 1, A/D enable, root HPA."""
    return MT_WB | ((vm.cfg.levels - 1) << 3) | (int(vm.cfg.ad) << 6) | (vm.mem.pfn(root_frame) << 12)


def invept_single(vm, pcpu: int, eptp: int) -> None:
    vm.pcpus[pcpu].tlb.flush_ctx(ept_context((eptp & PFN_MASK) >> 12))
    vm.stats["invept_single"] += 1
    vm.cost("flush_current")


def invept_global(vm, pcpu: int) -> None:
    vm.pcpus[pcpu].tlb.flush_all()
    vm.stats["invept_global"] += 1
    vm.cost("flush_all")


def svm_flush_tlb_asid(vm, v: Vcpu) -> None:
    """TLB_CONTROL_FLUSH_ASID with FlushByAsid (unless a full flush is already due),
    otherwise a new ASID at the next VMRUN (svm_flush_tlb_asid())."""
    if vm.cfg.flush_by_asid:
        if v.tlb_control != TLB_CONTROL_FLUSH_ALL_ASID:
            v.tlb_control = TLB_CONTROL_FLUSH_ASID
    else:
        v.asid_generation = (v.asid_generation - 1) & U64


def vendor_flush_tlb_current(vm, v: Vcpu) -> None:
    """VMX: INVEPT single-context on the current root's EPTP (nothing without a root)."""
    vm.stats["flush_current"] += 1
    if vm.cfg.arch == "svm":
        svm_flush_tlb_asid(vm, v)
        return
    r = tdp_mmu.find_root(vm, v.root_id)
    if r is None or v.pcpu < 0:
        return
    invept_single(vm, v.pcpu, cpu_eptp(vm, r.frame))


def vendor_flush_tlb_all(vm, v: Vcpu) -> None:
    """vmx_flush_tlb_all(): INVEPT global (every EPTP context); SVM: the current ASID
    suffices (svm_flush_tlb_all() -> svm_flush_tlb_asid())."""
    vm.stats["flush_all"] += 1
    if vm.cfg.arch == "svm":
        svm_flush_tlb_asid(vm, v)
        return
    if v.pcpu >= 0:
        invept_global(vm, v.pcpu)


def vendor_flush_tlb_guest(vm, v: Vcpu) -> None:
    """VMX: INVVPID single-context -- linear and combined mappings only; the
    guest-physical mappings this model caches survive (SDM 28.3.3.1, "Operations that
    Invalidate Cached Mappings": INVVPID)."""
    vm.stats["flush_guest"] += 1
    if vm.cfg.arch == "svm":
        svm_flush_tlb_asid(vm, v)
        return
    vm.stats["invvpid"] += 1
    vm.cost("flush_current")


def svm_new_asid(vm, pc: Pcpu, v: Vcpu) -> None:
    """new_asid(): ASIDs are handed out per pCPU within a generation; running out bumps
    the generation and flushes every ASID (svm/svm.c)."""
    if pc.next_asid > pc.max_asid:
        pc.asid_generation += 1
        pc.next_asid = pc.min_asid
        v.tlb_control = TLB_CONTROL_FLUSH_ALL_ASID
        vm.stats["asid_generation_bumps"] += 1
    v.asid = pc.next_asid
    pc.next_asid += 1
    v.asid_generation = pc.asid_generation
    vm.stats["asid_new"] += 1


def svm_pre_run(vm, v: Vcpu) -> None:
    """pre_svm_run(): a VMCB that last ran on another pCPU gets a fresh ASID here
    (generation reset); TLB_CONTROL acts at VMRUN, then goes back to DO_NOTHING."""
    pc = vm.pcpus[v.pcpu]
    if v.vmcs_cpu != v.pcpu:
        if vm.pol.flush_on_migrate:
            v.asid_generation = 0
        if v.vmcs_cpu >= 0:
            vm.stats["vcpu_migrations"] += 1
        v.vmcs_cpu = v.pcpu
    if v.asid_generation != pc.asid_generation:
        svm_new_asid(vm, pc, v)
    if v.tlb_control == TLB_CONTROL_FLUSH_ALL_ASID:
        pc.tlb.flush_all()
        vm.stats["tlb_control_flush_all"] += 1
        vm.cost("flush_all")
    elif v.tlb_control in (TLB_CONTROL_FLUSH_ASID, TLB_CONTROL_FLUSH_ASID_LOCAL):
        pc.tlb.flush_ctx(asid_context(v.asid))
        vm.stats["tlb_control_flush_asid"] += 1
        vm.cost("flush_current")
    v.tlb_control = TLB_CONTROL_DO_NOTHING


def vcpu_context(vm, v: Vcpu) -> int:
    """The TLB tag of the vCPU's current translations: the EP4TA (VMX) or the ASID (SVM)."""
    if vm.cfg.arch == "svm":
        return asid_context(v.asid)
    r = tdp_mmu.find_root(vm, v.root_id)
    return ept_context(vm.mem.pfn(r.frame) if r is not None else 0)


# ============================================================================ entry / exit
def vcpu_enter(vm, v: Vcpu) -> None:
    """vcpu_enter_guest() (x86.c): service the requests in KVM's order, reload the MMU --
    kvm_mmu_load() always flushes the current context (the root's provenance is unknown:
    it may have been torn down without a flush) -- then enter."""
    pc = vm.pcpus[v.pcpu]
    if v.requests & REQ_MMU_FREE_OBSOLETE_ROOTS:
        v.requests &= ~REQ_MMU_FREE_OBSOLETE_ROOTS
        r = tdp_mmu.find_root(vm, v.root_id)
        if v.root_id and (r is None or r.invalid):       # kvm_mmu_free_obsolete_roots()
            tdp_mmu.put_root(vm, v.root_id, shared=True)
            v.root_id = 0
    v.requests &= ~REQ_LOAD_MMU_PGD
    if v.requests & REQ_TLB_FLUSH:
        # kvm_vcpu_flush_tlb_all() also covers a pending FLUSH_CURRENT.
        v.requests &= ~(REQ_TLB_FLUSH | REQ_TLB_FLUSH_CURRENT)
        vm.stats["tlb_flush"] += 1
        if vm.pol.remote_flush_all_contexts:
            vendor_flush_tlb_all(vm, v)
        else:
            vendor_flush_tlb_current(vm, v)   # B16
    if v.requests & REQ_TLB_FLUSH_CURRENT:
        v.requests &= ~REQ_TLB_FLUSH_CURRENT
        vendor_flush_tlb_current(vm, v)
    if v.requests & REQ_TLB_FLUSH_GUEST:
        v.requests &= ~REQ_TLB_FLUSH_GUEST
        vendor_flush_tlb_guest(vm, v)
    if not v.root_id:
        # kvm_mmu_reload() -> kvm_mmu_load(): allocate or reuse, load, flush current.
        root_id = tdp_mmu.get_vcpu_root(vm, 0, 0)
        if root_id is None:
            raise FramePoolExhausted(f"no frame left for vcpu {v.id}'s root (frame_limit reached)")
        v.root_id = root_id
        if vm.pol.flush_on_root_load:
            vendor_flush_tlb_current(vm, v)
    if vm.cfg.arch == "svm":
        svm_pre_run(vm, v)
    pc.cur_ctx = vcpu_context(vm, v)
    pc.vcpu = v.id
    v.mode = IN_GUEST
    vm.stats["vm_entries"] += 1
    vm.cost("vm_entry")


def vcpu_exit(vm, v: Vcpu) -> None:
    if v.mode == IN_GUEST:
        vm.stats["vm_exits"] += 1
        vm.cost("vm_exit")
    if v.mode != OUTSIDE_GUEST and v.pcpu >= 0 and vm.pcpus[v.pcpu].vcpu == v.id:
        vm.pcpus[v.pcpu].vcpu = -1
    v.mode = OUTSIDE_GUEST


def vcpu_run(vm, v: Vcpu, pcpu: int) -> None:
    """Leave guest mode wherever the vCPU is (a kicked vCPU first re-enters where it is,
    servicing its requests), load it on ``pcpu`` (preempting whoever runs there), enter.
    VMX (vmx_vcpu_load_vmcs): a VMCS last loaded elsewhere requests a flush of every
    EPTP context; SVM handles migration in pre_svm_run."""
    pc = vm.pcpus[pcpu]
    if v.mode == EXITING_GUEST:
        vcpu_enter(vm, v)
    vcpu_exit(vm, v)
    if pc.vcpu >= 0 and pc.vcpu != v.id:
        vcpu_exit(vm, vm.vcpus[pc.vcpu])
    v.pcpu = pcpu
    if vm.cfg.arch == "vmx" and v.vmcs_cpu != pcpu:
        if vm.pol.flush_on_migrate:
            v.requests |= REQ_TLB_FLUSH
        if v.vmcs_cpu >= 0:
            vm.stats["vcpu_migrations"] += 1
        v.vmcs_cpu = pcpu
    vcpu_enter(vm, v)


# ============================================================================ guest accesses
@dataclass
class AccessOut:
    outcome: int = OUT_OK
    hpa: int = 0
    tlb_hit: int = 0        # 1 L1, 2 L2, 0 walked
    faults: int = 0
    walk_refs: int = 0
    violation: int = 0      # index + 1 into the violations, 0 none


def _need_perm(vm, access: int) -> int:
    return {0: PERM_R, 1: PERM_W, 2: PERM_X}.get(access, PERM_XU if vm.cfg.mbec else PERM_X)


def _engine_read(vm):
    def read(hpa: int) -> int:
        f = vm.mem.frame_of(hpa >> 12)
        return 0 if f is None else vm.mem.read_entry(f, (hpa & 0xFFF) >> 3)
    return read


def _engine_write(vm, hpa: int, old: int, new: int) -> None:
    """A hardware A/D update: a locked read-modify-write of a (possibly dying) table."""
    f = vm.mem.frame_of(hpa >> 12)
    if f is None or vm.mem.frames[f].state not in (hostmem.TABLE, hostmem.RCU):
        return
    table = vm.mem.table(f)
    i = (hpa & 0xFFF) >> 3
    if table[i] == old:
        table[i] = new


def _fault(vm, v: Vcpu, gfn: int, gpa: int, access: int, out: AccessOut) -> bool:
    """Take the EPT violation / #NPF; True when the access is over (emulated, blocked)."""
    out.faults += 1
    r = mmu.page_fault(vm, tdp_mmu.find_root(vm, v.root_id), gfn, access)
    if r == tdp_mmu.RET_PF_EMULATE:
        out.outcome = OUT_MMIO
        return True
    if r == tdp_mmu.RET_PF_BLOCKED:
        out.outcome = OUT_BLOCKED
        return True
    if r == tdp_mmu.RET_PF_NOMEM:
        raise FramePoolExhausted(f"frame pool exhausted while handling a fault on gpa {gpa:#x}")
    return False


def access(vm, v: Vcpu, gpa: int, access: int, batch_index: int = 0) -> AccessOut:
    """One guest access: TLB lookup; on a miss a walk (possibly starting from a
    paging-structure-cache entry) that fills the caches; on a fault the fault handler and
    a retry.  The checker judges the translation used."""
    out = AccessOut()
    nviol_before = len(vm.violations)
    if v.mode == EXITING_GUEST:
        vcpu_enter(vm, v)    # kicked by a request: re-enter on the same pCPU first
    pc = vm.pcpus[v.pcpu]
    gfn = gpa >> 12
    need = _need_perm(vm, access)
    is_write = access == 1
    ad = vm.cfg.arch == "svm" or vm.cfg.ad
    vm.stats["accesses"] += 1
    for _ in range(MAX_FAULT_RETRIES):
        ctx = pc.cur_ctx
        tag = ctx & ((1 << 62) - 1)
        hit, e = pc.tlb.lookup(ctx, gfn)
        if hit:
            permitted = bool(e.perms & need)
            # [MODEL CHOICE] a write through an entry that has not recorded D re-walks to
            # set it (SDM 28.2.4: D is set in the leaf on a write).
            if permitted and not (is_write and ad and not e.dirty):
                vm.stats["tlb_hits_l1" if hit == 1 else "tlb_hits_l2"] += 1
                vm.cost("tlb_hit")
                off = gfn & (pages_per_level(e.level) - 1)
                out.tlb_hit = hit
                out.hpa = ((e.pfn + off) << 12) | (gpa & 0xFFF)
                checker.check_translation(vm, v, gpa, access, e.pfn + off, e.level, tag, batch_index)
                break
            if not permitted:
                # The cached entry denies the access: an EPT violation / #NPF from the
                # TLB, which drops the entries translating the gpa (SDM 28.3.3.1).
                vm.stats["tlb_hits_l1" if hit == 1 else "tlb_hits_l2"] += 1
                pc.tlb.flush_gfn_ctx(ctx, gfn)
                if _fault(vm, v, gfn, gpa, access, out):
                    break
                continue
        vm.stats["tlb_misses"] += 1
        vm.cost("tlb_miss")
        if _walk_and_fill(vm, v, pc, ctx, tag, gpa, access, is_write, ad, out, batch_index):
            break
    else:
        out.outcome = OUT_LIVELOCK
        checker.report_livelock(vm, v, gpa, access, batch_index)
    if len(vm.violations) > nviol_before:
        out.violation = len(vm.violations)
    return out


def _walk_and_fill(vm, v, pc, ctx, tag, gpa, access, is_write, ad, out, batch_index) -> bool:
    """A TLB miss: walk, fill the caches, check.  True when the access is over."""
    gfn = gpa >> 12
    root = tdp_mmu.find_root(vm, v.root_id)
    table, level, perms = vm.mem.pfn(root.frame) << 12, root.level, PERM_ALL
    stale_reported = False
    psc = pc.tlb.psc_lookup(ctx, gfn, root.level)
    if psc is not None:
        vm.stats[f"psc_hits_l{psc.level}"] += 1
        stale_reported = checker.check_psc_entry(vm, v, gpa, access, psc, tag, batch_index)
        table, level, perms = psc.pfn << 12, psc.level - 1, psc.perms
    w = page_walker.walk(_engine_read(vm), vm.hw, table, level, perms, gpa, access)
    vm.stats["walks"] += 1
    vm.stats["walk_refs"] += w.refs
    vm.cost("walk_ref", w.refs)
    out.walk_refs += w.refs
    if w.status == page_walker.OK:
        for addr, old, new in w.ad_writes:
            _engine_write(vm, addr, old, new)
        vm.stats["ad_updates"] += len(w.ad_writes)
        # Fill the paging-structure caches with every non-leaf entry used.
        acc = perms
        for i, ent in enumerate(w.entries[:-1]):
            acc &= spte_hw_perms(vm.masks, ent)
            child = (ent & PFN_MASK) >> 12
            cf = vm.mem.frame_of(child)
            pc.tlb.psc_fill(ctx, gfn, level - i, child, acc, vm.mem.frames[cf].gen if cf is not None else 0)
            vm.stats["psc_fills"] += 1
        leaf_pfn = (w.hpa >> 12) & ~(pages_per_level(w.level) - 1)
        dirty = not ad or is_write or bool(w.entries[-1] & vm.masks.dirty)
        pc.tlb.fill(ctx, gfn, w.level, leaf_pfn, w.perms, dirty)
        vm.stats["tlb_fills"] += 1
        out.hpa = w.hpa
        if not stale_reported:
            checker.check_translation(vm, v, gpa, access, w.hpa >> 12, w.level, tag, batch_index)
        return True
    # EPT violation / misconfiguration, #NPF: the walk drops what it would have used.
    last = w.entries[-1] if w.entries else 0
    pc.tlb.flush_gfn_ctx(ctx, gfn)
    if w.status == page_walker.MISCONFIG or (w.status == page_walker.NPF and w.error_code & 8):
        # KVM's MMIO SPTE: emulate without a full fault if its memslot generation is
        # current (check_mmio_spte()); a stale one is an ordinary fault and rebuilt.
        if is_mmio_spte(vm.masks, last) and mmio_spte_gen(last) == vm.memslots_gen & MMIO_GEN_MASK:
            out.outcome = OUT_MMIO
            return True
    return _fault(vm, v, gfn, gpa, access, out)


# ============================================================================ boot-time junk
def fill_junk(vm, pcpu: int, count: int, max_gfn: int) -> None:
    """Junk entries under tags a later root or ASID of this VM may carry: the first pool
    frames (LIFO makes them likely roots) and low ASIDs."""
    tlb = vm.pcpus[pcpu].tlb
    rng = (vm.cfg.seed * 0x2545F4914F6CDD1D + pcpu * 0x9E3779B97F4A7C15 + 1) & U64
    for _ in range(count):
        rng ^= (rng << 13) & U64
        rng ^= rng >> 7
        rng ^= (rng << 17) & U64
        ctx = (ept_context(vm.mem.base_pfn + rng % 64) if vm.cfg.arch == "vmx"
               else asid_context(vm.cfg.min_asid + rng % 64))
        r2 = (rng * 0x9E3779B97F4A7C15) & U64
        tlb.fill(ctx, (r2 >> 8) % max_gfn, 1, (r2 >> 20) & 0xFFFFFF, 7, True)
