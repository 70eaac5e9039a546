/* mmu_notifier.h — the MMU notifier's pieces that stepped operations share with
 * the synchronous host events (mmu_notifier.c). */
#ifndef TDPFAST_MMU_NOTIFIER_H
#define TDPFAST_MMU_NOTIFIER_H
#include "spte.h"

struct tdp_vm;

/* kvm_mmu_invalidate_begin()/_range_add() and kvm_mmu_invalidate_end(). */
void kvm_mmu_invalidate_begin(struct tdp_vm *vm, u64 start, u64 end);
void kvm_mmu_invalidate_end(struct tdp_vm *vm);
/* The roots an invalidation zaps (ROOTS_ALL upstream, ROOTS_VALID by policy). */
int mmu_notifier_roots(struct tdp_vm *vm);
/* Before an unmap: make sure recording "unbacked" cannot fail later. */
int mmu_notifier_unmap_prepare(struct tdp_vm *vm, u64 start, u64 end);
/* After the zap: the flush it owes, the host freeing the pages, then _end(). */
void mmu_notifier_unmap_finish(struct tdp_vm *vm, u64 start, u64 end, bool flush);

#endif
