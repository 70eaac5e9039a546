/* event.h — the event log (every successful top-level operation, replayable), the
 * access-batch store behind it, and the internal trace. The vocabulary is
 * events.def; this header turns it into the EV_* codes. */
#ifndef TDPFAST_EVENT_H
#define TDPFAST_EVENT_H
#include <stddef.h>
#include "spte.h"
#include "tdpfast.h"

struct tdp_vm;

enum ev_op {
	EV_NONE = 0, /* never logged */
#define EVENT(code, name, nargs) EV_##code,
#include "events.def"
#undef EVENT
	EV_COUNT     /* codes 0 .. EV_COUNT - 1 */
};

/* Trace record kinds: enum tdp_trace_kind (tdpfast.h). */
enum tr_kind {
	TR_SPTE_CHANGED = TDP_TR_SPTE_CHANGED, TR_REMOTE_FLUSH = TDP_TR_REMOTE_FLUSH,
	TR_RANGE_FLUSH = TDP_TR_RANGE_FLUSH, TR_VENDOR_FLUSH = TDP_TR_VENDOR_FLUSH,
	TR_ROOT_ALLOC = TDP_TR_ROOT_ALLOC, TR_ROOT_PUT = TDP_TR_ROOT_PUT, TR_ROOT_FREE = TDP_TR_ROOT_FREE,
	TR_FAULT = TDP_TR_FAULT, TR_YIELD = TDP_TR_YIELD, TR_IPI = TDP_TR_IPI, TR_NEW_ASID = TDP_TR_NEW_ASID
};

/* Append one event (when the VM records). */
void vm_log(struct tdp_vm *vm, u32 op, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4);
/* Room for an access batch of n accesses in the batch store (0, or -1: no memory). */
int vm_log_reserve_batch(struct tdp_vm *vm, size_t n);
/* Log an access batch: its n accesses go to the store reserved above. */
void vm_log_access_batch(struct tdp_vm *vm, int vcpu, const u64 *gpas, const u8 *accesses,
			 int default_access, size_t n);
void vm_trace_rec(struct tdp_vm *vm, u32 kind, u32 level, u64 a, u64 b, u64 c);

#endif
