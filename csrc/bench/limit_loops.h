/* limit_loops.h — "physical limit" loops for the benchmark suite (tdpfast bench,
 * benches/): the least work a machine must do for each measured operation, with
 * none of the model's bookkeeping. Each engine measurement is reported as a
 * ratio to its limit, measured in the same run on the same data sizes.
 *
 * Built as its own extension, tdpfast._bench_limits (tdpfast/bench/_limits_build.py),
 * outside the engine; cffi parses this header: plain declarations with stdint
 * types only, no macros.
 *
 * Memory layout shared by the table loops: `mem` is an array of page tables,
 * 512 uint64_t entries (4 KiB) each; table 0 is the root. An entry is
 * (index << 12) | 7 where index is a child table (non-leaf) or a page frame
 * (leaf); 0 is not present. */
#ifndef TDPFAST_BENCH_LIMITS_H
#define TDPFAST_BENCH_LIMITS_H
#include <stddef.h>
#include <stdint.h>

/* Zap: store `nonpresent` into every entry of `ntables` consecutive page tables
 * (one store per entry, nothing read); returns the number of entries written. */
uint64_t tdp_limit_zap(uint64_t *tables, uint64_t ntables, uint64_t nonpresent);

/* Fill `ntables` consecutive page tables with present leaf entries. */
void tdp_limit_fill(uint64_t *tables, uint64_t ntables);

/* Population: build a `levels`-level radix tree in `mem` (capacity `max_tables`
 * tables, zeroed here) that maps gfns [0, npages) with 4 KiB leaves, one gfn at
 * a time from the root, allocating tables on the way as a fault would. Returns
 * the number of tables used, or UINT64_MAX if `max_tables` is too small. */
uint64_t tdp_limit_populate(uint64_t *mem, uint64_t max_tables, int levels, uint64_t npages);

/* Walk: translate each gfn through the tree built by tdp_limit_populate (a chain
 * of `levels` dependent loads, no caches). Returns the sum of the leaf frames
 * (so the loop cannot be optimised away); a not-present entry adds nothing. */
uint64_t tdp_limit_walk(const uint64_t *mem, int levels, const uint64_t *gfns, uint64_t n);

/* The bare set-associative TLB lookup: an L1 array and an L2 array (sets x ways
 * each; l2_sets = 0: none), indexed like the engine's TLB (4 KiB pages, vpn = gfn).
 * A lookup probes L1, then L2 (an L2 hit refills L1); a miss fills both (FIFO
 * replacement: nothing is recorded on a hit). No walk, no context tags, no
 * checking: per hit exactly a set-index hash and a compare over the ways' 8-byte
 * tags. */
typedef struct tdp_limit_tlb tdp_limit_tlb;
tdp_limit_tlb *tdp_limit_tlb_new(uint32_t l1_sets, uint32_t l1_ways, uint32_t l2_sets, uint32_t l2_ways);
void tdp_limit_tlb_free(tdp_limit_tlb *t);
/* Look up every gpa; counts[0] += L1 hits, counts[1] += L2 hits, counts[2] += misses. */
void tdp_limit_tlb_run(tdp_limit_tlb *t, const uint64_t *gpas, uint64_t n, uint64_t *counts);

#endif
