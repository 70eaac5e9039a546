/* walk.h — the hardware two-dimensional-paging walker (EPT per SDM "EPT
 * Translation Mechanism", 28.2.2, and "EPT-Induced VM Exits", 28.2.3, in the 2016
 * edition of Intel SDM Vol. 3C; NPT per AMD APM Vol. 2 15.25 "Nested Paging"), over
 * any memory: the engine's own frames or a memory image. */
#ifndef TDPFAST_WALK_H
#define TDPFAST_WALK_H
#include "spte.h"
#include "tdpfast.h"

struct walk_mem {
	/* Read the 8-byte entry at hpa; return 0, or TDP_EMISSING if absent. */
	int (*read)(void *ctx, u64 hpa, u64 *val);
	void *ctx;
};

/* Perm bits used by walks and TLBs. */
enum { PERM_R = 1, PERM_W = 2, PERM_X = 4, PERM_XU = 8, PERM_ALL = 15 };

/* Walk from `table` (an entry array at `start_level`) with the permissions
 * accumulated above it. Fills out->ad_* with the A/D updates a successful
 * translation makes (it does not write them). Returns 0 or TDP_EMISSING. */
int walk_gpa(const struct tdp_hw_params *p, const struct walk_mem *mem, u64 table,
	     int start_level, unsigned start_perms, u64 gpa, int access,
	     struct tdp_walk_result *out);
/* walk_gpa() over the engine's frames (hostmem_read_entry()), its reads inline: the
 * result's scalar fields are set and its arrays written only as far as nentries and
 * nad say (the rest is left as it was). Never fails. */
struct hostmem;
int walk_gpa_hostmem(const struct tdp_hw_params *p, const struct hostmem *h, u64 table, int start_level,
		     unsigned start_perms, u64 gpa, int access, struct tdp_walk_result *out);
/* Decode an EPTP / nCR3; returns 0 and the root table address, or TDP_EINVAL with
 * a message in err. */
int walk_decode_root_pointer(const struct tdp_hw_params *p, u64 rp, u64 *table, int *ad,
			     char *err, size_t errlen);

#endif
