/* walk.c — see walk.h. Each rule names its source: Intel SDM Vol. 3C sections by
 * their 2016-edition numbers (chapter 28, "VMX Support for Address Translation"),
 * AMD APM Vol. 2 sections of 15.25 "Nested Paging". */
#include <stdio.h>
#include <string.h>
#include "hostmem.h"
#include "walk.h"

static inline u64 bits(int hi, int lo)
{
	if (hi < lo)
		return 0;
	return ((hi == 63) ? ~0ull : ((1ull << (hi + 1)) - 1)) & ~((1ull << lo) - 1);
}

int walk_decode_root_pointer(const struct tdp_hw_params *p, u64 rp, u64 *table, int *ad,
			     char *err, size_t errlen)
{
	if (p->fmt == FMT_EPT) {
		/* EPTP (VMCS field 0x201A; SDM 26.2.1.1 VM-entry checks): memtype
		 * UC/WB, PWL-1 = levels-1, bit 6 A/D, 11:8 reserved,
		 * bit 7 (supervisor shadow stack in newer SDMs) ignored, 63:M reserved. */
		unsigned mt = rp & 7, pwl = (rp >> 3) & 7;
		if (mt != 0 && mt != 6) {
			snprintf(err, errlen, "root_pointer: EPTP memory type %u is reserved (only 0=UC and 6=WB)", mt);
			return TDP_EINVAL;
		}
		if (pwl != (unsigned)(p->levels - 1)) {
			snprintf(err, errlen, "root_pointer: EPTP page-walk length %u does not match levels=%d", pwl + 1, p->levels);
			return TDP_EINVAL;
		}
		if (rp & bits(11, 8)) {
			snprintf(err, errlen, "root_pointer: EPTP reserved bits 11:8 are set (0x%llx)", (unsigned long long)rp);
			return TDP_EINVAL;
		}
		if (rp & bits(63, p->maxphyaddr)) {
			snprintf(err, errlen, "root_pointer: EPTP has bits at or above MAXPHYADDR=%d (0x%llx)", p->maxphyaddr, (unsigned long long)rp);
			return TDP_EINVAL;
		}
		*ad = (int)((rp >> 6) & 1);
	} else {
		/* APM 15.25.3: nCR3 has the CR3 format: base 51:12, PWT/PCD; MBZ above MAXPHYADDR. */
		if (rp & bits(63, p->maxphyaddr)) {
			snprintf(err, errlen, "root_pointer: nCR3 has bits at or above MAXPHYADDR=%d (0x%llx)", p->maxphyaddr, (unsigned long long)rp);
			return TDP_EINVAL;
		}
		*ad = 1;
	}
	*table = rp & bits(51, 12);
	return 0;
}

static void record_fault(struct tdp_walk_result *out, int status, int level)
{
	out->status = status;
	out->level = level;
	out->nad = 0;
	out->hpa = 0;
}

/* Data-access bits of the qualification for an access of `kind` (the SDM's table of
 * the exit qualification for EPT violations; 28.2.3.2 "EPT Violations"): a guest
 * paging-structure access is a read, a write (it will set guest A/D), or with EPT
 * A/D on always a write that also reports the read. */
static u64 ept_qual(int access, const struct tdp_hw_params *p, bool ad_on, unsigned perms)
{
	u64 q = 0;

	if (p->paging_structure) {
		if (ad_on)
			q |= 3;
		else
			q |= access == TDP_ACC_WRITE ? 2 : 1;
	} else if (access == TDP_ACC_READ) {
		q |= 1;
	} else if (access == TDP_ACC_WRITE) {
		q |= 2;
	} else {
		q |= 4;
	}
	q |= (u64)(perms & 7) << 3;
	if (p->mbec)
		q |= (u64)((perms >> 3) & 1) << 6;
	q |= 1ull << 7; /* guest-linear-address field valid */
	if (!p->paging_structure)
		q |= 1ull << 8; /* the translation of a linear address (CR0.PG=0: LA == GPA) */
	return q;
}

static u64 npt_ec(int access, bool present, bool rsvd, bool paging_structure)
{
	u64 ec = 1ull << 2; /* US: every nested walk is a user access (APM 15.25.5) */

	if (present)
		ec |= 1;
	if (access == TDP_ACC_WRITE || paging_structure)
		ec |= 2;
	if (rsvd)
		ec |= 8;
	if ((access == TDP_ACC_EXEC || access == TDP_ACC_EXEC_USER) && !paging_structure)
		ec |= 16;
	ec |= paging_structure ? (1ull << 33) : (1ull << 32);
	return ec;
}

/* The walks are written once, inline into each kind of memory they read: `read`
 * (a constant at each use) with `rctx`, as struct walk_mem. */
typedef int (*walk_read_fn)(void *ctx, u64 hpa, u64 *val);

static inline __attribute__((always_inline)) int walk_ept(const struct tdp_hw_params *restrict p, walk_read_fn read,
							  void *rctx, u64 table, int start_level, unsigned perms,
							  u64 gpa, int access, struct tdp_walk_result *restrict out)
{
	bool ad_on = p->ad != 0;
	/* SDM 28.2.3.2 and 28.2.4: with EPT A/D on, guest paging-structure accesses count as writes;
	 * without, they are reads unless the walk writes guest A/D (access "w"). */
	bool is_write = access == TDP_ACC_WRITE || (p->paging_structure && ad_on);
	int level;
	u64 e = 0;

	if (p->levels == 4 && (gpa & bits(51, 48))) {
		/* 4-level EPT with GPA bits 51:48 set is a violation, perms 0 (SDM "EPT
		 * Translation Mechanism"; the exit-qualification table's note 2). */
		record_fault(out, TDP_WALK_VIOLATION, p->levels);
		out->qualification = ept_qual(access, p, ad_on, 0);
		return 0;
	}
	for (level = start_level; level >= 1; level--) {
		u64 addr = table | (((gpa >> (12 + 9 * (level - 1))) & 511) << 3);
		int r = read(rctx, addr, &e);
		if (r)
			return r;
		out->refs++;
		out->entries[out->nentries++] = e;
		bool present = (e & 7) || (p->mbec && (e & EPT_XU));
		if (!present) {
			/* SDM 28.2.3.3 ordering: not present -> violation; bits 62:3
			 * ignored; perms read 0. */
			record_fault(out, TDP_WALK_VIOLATION, level);
			out->qualification = ept_qual(access, p, ad_on, 0);
			out->perms = 0;
			return 0;
		}
		bool leaf = level == 1 || ((level == 2 || level == 3) && (e & SPTE_PS));
		u64 rsvd = bits(51, p->maxphyaddr);
		if (level >= 4)
			rsvd |= bits(7, 3);
		else if (!leaf)
			rsvd |= bits(6, 3);
		else if (level == 3)
			rsvd |= bits(29, 12);
		else if (level == 2)
			rsvd |= bits(20, 12);
		bool misconfig = (e & 3) == 2 || /* W without R */
				 (!(e & 1) && !p->exec_only && ((e & 4) || (p->mbec && (e & EPT_XU)))) ||
				 (e & rsvd);
		if (leaf) {
			unsigned mt = (e >> 3) & 7;
			misconfig |= mt == 2 || mt == 3 || mt == 7;
		}
		if (misconfig) {
			record_fault(out, TDP_WALK_MISCONFIG, level);
			return 0;
		}
		perms &= (unsigned)((e & 7) | (((e >> 10) & 1) << 3));
		if (leaf)
			break;
		table = e & bits(51, 12);
	}
	out->perms = perms;
	bool ok;
	if (is_write)
		ok = (perms & PERM_W) != 0;
	else if (access == TDP_ACC_READ || p->paging_structure)
		ok = (perms & PERM_R) != 0;
	else if (access == TDP_ACC_EXEC)
		ok = (perms & PERM_X) != 0;
	else
		ok = (perms & (p->mbec ? PERM_XU : PERM_X)) != 0;
	if (!ok) {
		record_fault(out, TDP_WALK_VIOLATION, level);
		out->qualification = ept_qual(access, p, ad_on, perms);
		return 0;
	}
	out->status = TDP_WALK_OK;
	out->level = level;
	out->hpa = (e & bits(51, 12 + 9 * (level - 1))) | (gpa & ((1ull << (12 + 9 * (level - 1))) - 1));
	if (ad_on) {
		/* SDM 28.2.4 "Accessed and Dirty Flags for EPT": A in every entry used, D in
		 * the leaf on a write; one update per entry. */
		int n = out->nentries, first = n - (start_level - level + 1);
		for (int i = first; i < n; i++) {
			u64 old = out->entries[i], nw = old | EPT_A;
			if (i == n - 1 && is_write)
				nw |= EPT_D;
			if (nw != old) {
				int lv = start_level - (i - first);
				out->ad_old[out->nad] = old;
				out->ad_new[out->nad] = nw;
				out->ad_addr[out->nad] = (u64)lv; /* patched to an address by caller */
				out->nad++;
			}
		}
	}
	return 0;
}

static inline __attribute__((always_inline)) int walk_npt(const struct tdp_hw_params *restrict p, walk_read_fn read,
							  void *rctx, u64 table, int start_level, unsigned perms,
							  u64 gpa, int access, struct tdp_walk_result *restrict out)
{
	bool is_write = access == TDP_ACC_WRITE || p->paging_structure;
	bool is_fetch = (access == TDP_ACC_EXEC || access == TDP_ACC_EXEC_USER) && !p->paging_structure;
	int level;
	u64 e = 0;

	if (p->levels == 4 && (gpa >> 48)) {
		/* [MODEL CHOICE] in the spec: beyond a 4-level NPT's reach -> #NPF. */
		record_fault(out, TDP_WALK_NPF, p->levels);
		out->error_code = npt_ec(access, false, false, p->paging_structure);
		return 0;
	}
	for (level = start_level; level >= 1; level--) {
		u64 addr = table | (((gpa >> (12 + 9 * (level - 1))) & 511) << 3);
		int r = read(rctx, addr, &e);
		if (r)
			return r;
		out->refs++;
		out->entries[out->nentries++] = e;
		if (!(e & NPT_P)) {
			record_fault(out, TDP_WALK_NPF, level);
			out->error_code = npt_ec(access, false, false, p->paging_structure);
			out->perms = 0;
			return 0;
		}
		bool leaf = level == 1 || ((level == 2 || level == 3) && (e & SPTE_PS));
		u64 rsvd = bits(51, p->maxphyaddr);
		if (level >= 4)
			/* PS, and bit 8 (Linux nonleaf_bit8_rsvd). Not in a PDPE: the
			 * Linux fix "bit 8 of non-leaf PDPEs is not reserved" (2020)
			 * overrides APM 15.25.3's reading of the format here. */
			rsvd |= (1ull << 7) | (1ull << 8);
		else if (leaf && level == 3)
			rsvd |= bits(29, 13);
		else if (leaf && level == 2)
			rsvd |= bits(20, 13);
		if (e & rsvd) {
			record_fault(out, TDP_WALK_NPF, level);
			out->error_code = npt_ec(access, true, true, p->paging_structure);
			return 0;
		}
		unsigned ep = PERM_R | ((e & NPT_W) ? PERM_W : 0) | ((e & NPT_NX) ? 0 : (PERM_X | PERM_XU));
		if (!(e & NPT_U))
			ep = 0; /* a supervisor entry denies the (user) nested access */
		perms &= ep;
		if (leaf)
			break;
		table = e & bits(51, 12);
	}
	out->perms = perms;
	bool ok = (perms & PERM_R) && (!is_write || (perms & PERM_W)) && (!is_fetch || (perms & PERM_X));
	if (!ok) {
		record_fault(out, TDP_WALK_NPF, level);
		out->error_code = npt_ec(access, true, false, p->paging_structure);
		return 0;
	}
	out->status = TDP_WALK_OK;
	out->level = level;
	out->hpa = (e & bits(51, 12 + 9 * (level - 1))) | (gpa & ((1ull << (12 + 9 * (level - 1))) - 1));
	if (p->ad) {
		int n = out->nentries, first = n - (start_level - level + 1);
		for (int i = first; i < n; i++) {
			u64 old = out->entries[i], nw = old | NPT_A;
			if (i == n - 1 && is_write)
				nw |= NPT_D;
			if (nw != old) {
				out->ad_old[out->nad] = old;
				out->ad_new[out->nad] = nw;
				out->ad_addr[out->nad] = (u64)(start_level - (i - first));
				out->nad++;
			}
		}
	}
	return 0;
}

/* The A/D records carry a level; name the entry address from the path. */
static void ad_addresses(struct tdp_walk_result *out, u64 table, int start_level, u64 gpa)
{
	u64 tables[6];

	tables[start_level] = table;
	for (int i = 0; i + 1 < out->nentries; i++) {
		int lv = start_level - i;
		tables[lv - 1] = out->entries[i] & bits(51, 12);
	}
	for (int k = 0; k < out->nad; k++) {
		int lv = (int)out->ad_addr[k];
		out->ad_addr[k] = tables[lv] | (((gpa >> (12 + 9 * (lv - 1))) & 511) << 3);
	}
}

int walk_gpa(const struct tdp_hw_params *p, const struct walk_mem *mem, u64 table,
	     int start_level, unsigned start_perms, u64 gpa, int access,
	     struct tdp_walk_result *out)
{
	int r;

	memset(out, 0, sizeof(*out));
	r = p->fmt == FMT_EPT ? walk_ept(p, mem->read, mem->ctx, table, start_level, start_perms, gpa, access, out)
			      : walk_npt(p, mem->read, mem->ctx, table, start_level, start_perms, gpa, access, out);
	if (r || !out->nad)
		return r;
	ad_addresses(out, table, start_level, gpa);
	return 0;
}

static inline int hostmem_read(void *ctx, u64 hpa, u64 *val)
{
	*val = hostmem_read_entry(ctx, hpa);
	return 0;
}

int walk_gpa_hostmem(const struct tdp_hw_params *p, const struct hostmem *h, u64 table, int start_level,
		     unsigned start_perms, u64 gpa, int access, struct tdp_walk_result *out)
{
	void *rctx = (void *)(uintptr_t)h; /* read only: hostmem_read() takes it back as const */

	out->status = 0;
	out->level = 0;
	out->hpa = 0;
	out->qualification = 0;
	out->error_code = 0;
	out->refs = 0;
	out->nentries = 0;
	out->nad = 0;
	out->perms = 0;
	if (p->fmt == FMT_EPT)
		walk_ept(p, hostmem_read, rctx, table, start_level, start_perms, gpa, access, out);
	else
		walk_npt(p, hostmem_read, rctx, table, start_level, start_perms, gpa, access, out);
	if (out->nad)
		ad_addresses(out, table, start_level, gpa);
	return 0;
}

/* ------------------------------------------------------------------ hardware walker on images */

struct image {
	const uint64_t *addrs;
	const uint8_t *pages;
	size_t n;
};

static int image_read(void *ctx, u64 hpa, u64 *val)
{
	struct image *im = ctx;
	u64 page = hpa & ~0xfffull;
	size_t lo = 0, hi = im->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (im->addrs[mid] < page)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == im->n || im->addrs[lo] != page) {
		*val = page;
		return TDP_EMISSING;
	}
	memcpy(val, im->pages + lo * 4096 + (hpa & 0xfff), 8);
	return 0;
}

int tdp_hw_walk(const uint64_t *page_addrs, const uint8_t *pages, size_t npages, uint64_t root_pointer,
		uint64_t gpa, int access, const struct tdp_hw_params *p, struct tdp_walk_result *out,
		char *err, size_t errlen)
{
	struct image im = {page_addrs, pages, npages};
	struct tdp_hw_params hp = *p;
	u64 table;
	int ad, r;

	if (p->fmt != FMT_EPT && p->fmt != FMT_NPT) {
		snprintf(err, errlen, "fmt must be 'ept' or 'npt'");
		return TDP_EINVAL;
	}
	if (p->levels != 4 && p->levels != 5) {
		snprintf(err, errlen, "levels must be 4 or 5, got %d", p->levels);
		return TDP_EINVAL;
	}
	if (p->maxphyaddr < 36 || p->maxphyaddr > 52) {
		snprintf(err, errlen, "maxphyaddr must be between 36 and 52, got %d", p->maxphyaddr);
		return TDP_EINVAL;
	}
	if (access < 0 || access > 3) {
		snprintf(err, errlen, "access must be 'r', 'w', 'x' or 'xu'");
		return TDP_EINVAL;
	}
	if (gpa >> p->maxphyaddr) {
		snprintf(err, errlen, "gpa 0x%llx is beyond MAXPHYADDR=%d", (unsigned long long)gpa, p->maxphyaddr);
		return TDP_EINVAL;
	}
	for (size_t i = 0; i < npages; i++) {
		if (page_addrs[i] & 0xfff) {
			snprintf(err, errlen, "memory image: address 0x%llx is not 4 KiB aligned", (unsigned long long)page_addrs[i]);
			return TDP_EIMAGE;
		}
		if (i && page_addrs[i] <= page_addrs[i - 1]) {
			snprintf(err, errlen, "memory image: addresses must be unique and sorted (0x%llx)", (unsigned long long)page_addrs[i]);
			return TDP_EIMAGE;
		}
	}
	if ((r = walk_decode_root_pointer(p, root_pointer, &table, &ad, err, errlen)))
		return r;
	hp.ad = p->ad && ad;
	struct walk_mem mem = {image_read, &im};
	r = walk_gpa(&hp, &mem, table, p->levels, 15, gpa, access, out);
	if (r == TDP_EMISSING)
		snprintf(err, errlen, "memory image has no page for a table the walk reads (after %d references)", out->refs);
	return r;
}
