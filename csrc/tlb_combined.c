/* tlb_combined.c — combined (guest-linear) TLB entries, their tags and the flushes
 * that reach them by epoch (tlb_combined.h). */
#include <stdlib.h>
#include <string.h>
#include "tlb_combined.h"

#define NPCID 4096

void ctlb_init(struct ctlb *t, u32 sets, u32 ways)
{
	memset(t, 0, sizeof(*t));
	t->sets = sets ? sets : 1;
	t->ways = ways ? ways : 1;
}

void ctlb_destroy(struct ctlb *t)
{
	for (u32 i = 0; i < t->nsp; i++)
		free(t->sp[i].pcid_ep);
	free(t->sp);
	free(t->e);
	memset(t, 0, sizeof(*t));
}

int ctlb_space(struct ctlb *t, u64 key, u32 id, u64 ep4ta)
{
	for (u32 i = 0; i < t->nsp; i++)
		if (t->sp[i].key == key)
			return (int)i;
	if (t->nsp == CTLB_MAX_SPACES) {
		/* Tags come and go with roots and ASIDs: rather than keep every one, drop
		 * every entry and start the tag table again (a processor may invalidate
		 * any cached entry at any time, Intel SDM Vol. 3C 29.4.3.2). */
		memset(t->e, 0, (size_t)t->sets * t->ways * sizeof(*t->e));
		for (u32 i = 0; i < t->nsp; i++)
			free(t->sp[i].pcid_ep);
		t->nsp = 0;
	}
	if (!t->e) {
		t->e = calloc((size_t)t->sets * t->ways, sizeof(*t->e));
		if (!t->e)
			return -1;
	}
	if (t->nsp == t->sp_cap) {
		u32 cap = t->sp_cap ? 2 * t->sp_cap : 8;
		struct ctlb_space *n = realloc(t->sp, cap * sizeof(*n));
		if (!n)
			return -1;
		t->sp = n;
		t->sp_cap = cap;
	}
	u32 *pe = calloc(NPCID, sizeof(u32)); /* epochs start at 0; the pages are touched as PCIDs are used */
	if (!pe)
		return -1;
	t->sp[t->nsp] = (struct ctlb_space){.key = key, .id = id, .ep4ta = ep4ta, .pcid_ep = pe};
	return (int)t->nsp++;
}

static inline bool alive(const struct ctlb *t, const struct ctlb_ent *e)
{
	const struct ctlb_space *s = &t->sp[e->space];
	if (!e->valid || s->ep_all != e->ep_all || (e->glevel > 1 && s->ep_frag != e->ep_frag))
		return false;
	return e->global || (s->ep_ng == e->ep_ng && s->pcid_ep[e->pcid] == e->ep_pcid);
}

static inline u32 set_of(const struct ctlb *t, u64 vpn)
{
	u64 h = vpn ^ (vpn >> 17);
	return (u32)(h % t->sets);
}

struct ctlb_ent *ctlb_lookup(struct ctlb *t, int space, u16 pcid, u64 vpn)
{
	if (!t->e)
		return NULL;
	struct ctlb_ent *set = &t->e[(size_t)set_of(t, vpn) * t->ways];
	for (u32 w = 0; w < t->ways; w++) {
		struct ctlb_ent *e = &set[w];
		/* A global entry is used with any PCID of its space (SDM: "global
		 * translations ... current VPID and EP4TA, any PCID"). */
		if (e->vpn == vpn && e->space == (u32)space && (e->global || e->pcid == pcid) && alive(t, e)) {
			e->stamp = ++t->stamp;
			return e;
		}
	}
	return NULL;
}

void ctlb_kill(struct ctlb_ent *e) { e->valid = 0; }

void ctlb_fill(struct ctlb *t, int space, u16 pcid, u64 vpn, u64 pfn, u64 gfn, unsigned perms, bool global,
	       bool dirty, int glevel, u32 gseq)
{
	struct ctlb_ent *set = &t->e[(size_t)set_of(t, vpn) * t->ways], *victim = NULL, *dead = NULL, *lru = NULL;
	for (u32 w = 0; w < t->ways && !victim; w++) {
		struct ctlb_ent *e = &set[w];
		if (!alive(t, e)) {
			if (!dead)
				dead = e;
		} else if (e->vpn == vpn && e->space == (u32)space && (e->global || e->pcid == pcid)) {
			victim = e; /* the same tag and page: replaced in place */
		} else if (!lru || e->stamp < lru->stamp) {
			lru = e;
		}
	}
	if (!victim)
		victim = dead ? dead : lru;
	const struct ctlb_space *s = &t->sp[space];
	*victim = (struct ctlb_ent){.vpn = vpn, .pfn = pfn, .gfn = gfn, .space = (u32)space, .ep_all = s->ep_all,
				    .ep_ng = s->ep_ng, .ep_pcid = s->pcid_ep[pcid & (NPCID - 1)],
				    .ep_frag = s->ep_frag, .stamp = ++t->stamp, .pcid = (u16)(pcid & (NPCID - 1)),
				    .valid = 1, .perms = (u8)perms, .global = global, .dirty = dirty,
				    .glevel = (u8)glevel, .gseq = gseq};
	t->fills++;
}

static bool matches(const struct ctlb_space *s, int match, u64 v)
{
	switch (match) {
	case CTLB_ID: return s->id == v;
	case CTLB_EP4TA: return s->ep4ta == v;
	case CTLB_ALL_BUT_ID0: return s->id != 0;
	default: return true;
	}
}

/* An epoch that would come back to a value some dead entry still carries clears
 * the array instead (after 2^32 flushes of one space). */
static void bump(struct ctlb *t, u32 *ep)
{
	if (++*ep == 0 && t->e)
		memset(t->e, 0, (size_t)t->sets * t->ways * sizeof(*t->e));
}

void ctlb_flush_addr(struct ctlb *t, int match, u64 key_value, int pcid, bool globals, u64 vpn)
{
	if (!t->e)
		return;
	struct ctlb_ent *set = &t->e[(size_t)set_of(t, vpn) * t->ways];
	for (u32 w = 0; w < t->ways; w++) {
		struct ctlb_ent *e = &set[w];
		if (!e->valid || e->vpn != vpn || !matches(&t->sp[e->space], match, key_value))
			continue;
		if (e->global ? globals : (pcid < 0 || e->pcid == pcid))
			e->valid = 0;
	}
	for (u32 i = 0; i < t->nsp; i++)
		if (matches(&t->sp[i], match, key_value))
			bump(t, &t->sp[i].ep_frag);
}

void ctlb_flush_pcid(struct ctlb *t, int match, u64 key_value, u16 pcid)
{
	for (u32 i = 0; i < t->nsp; i++)
		if (matches(&t->sp[i], match, key_value))
			bump(t, &t->sp[i].pcid_ep[pcid & (NPCID - 1)]);
}

void ctlb_flush_spaces(struct ctlb *t, int match, u64 key_value, bool globals)
{
	for (u32 i = 0; i < t->nsp; i++)
		if (matches(&t->sp[i], match, key_value))
			bump(t, globals ? &t->sp[i].ep_all : &t->sp[i].ep_ng);
}

u64 ctlb_live_entries(const struct ctlb *t)
{
	u64 n = 0;
	for (size_t i = 0; t->e && i < (size_t)t->sets * t->ways; i++)
		n += alive(t, &t->e[i]);
	return n;
}

size_t ctlb_dump(const struct ctlb *t, struct tdp_combined_entry *out, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; t->e && i < (size_t)t->sets * t->ways; i++) {
		const struct ctlb_ent *e = &t->e[i];
		if (!alive(t, e))
			continue;
		if (out && n < max)
			out[n] = (struct tdp_combined_entry){.id = t->sp[e->space].id, .ep4ta = t->sp[e->space].ep4ta << 12,
							     .pcid = e->pcid, .gva = e->vpn << 12, .gpa = e->gfn << 12,
							     .hpa = e->pfn << 12, .perms = e->perms, .is_global = e->global,
							     .dirty = e->dirty, .guest_level = e->glevel};
		n++;
	}
	return n;
}

u64 ctlb_digest(const struct ctlb *t, u64 h, u64 (*mix)(u64, u64))
{
	if (!t->fills)
		return h; /* never used: the digest of a VM without guest paging is unchanged */
	for (size_t i = 0; i < (size_t)t->sets * t->ways; i++) {
		const struct ctlb_ent *e = &t->e[i];
		if (alive(t, e))
			h = mix(mix(mix(h, e->vpn), e->pfn), ((u64)t->sp[e->space].key << 8) ^ ((u64)e->pcid << 16) ^ e->perms);
	}
	return h;
}
