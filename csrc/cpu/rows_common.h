// What every instruction-set level of the CPU row kernels shares: the headers they
// need and the neighbour types. Included (once) before any ISA-specific code, so
// that nothing declared here carries a target attribute: the inline functions of
// these headers (ATen, c10, std) are compiled for the baseline everywhere, and the
// linker can merge their copies across translation units without risk (isa.h).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Intrinsics for the AVX2 level; usable inside functions that carry target("avx2,fma,f16c").
#include <immintrin.h>
#define GRAPHATTN_CPU_HAVE_AVX2_LEVEL 1
#else
#define GRAPHATTN_CPU_HAVE_AVX2_LEVEL 0
#endif

#include "../params.h"

namespace graphattn {
namespace cpu {

// Edges of row i are positions [offsets[i], offsets[i+1]); position p names the
// other endpoint index[p] and the edge_index column edge_id[p].
struct CsrNeighbours {
  const int64_t* offsets;
  const int64_t* index;
  const int64_t* edge_id;
  int64_t num_other;  // rows on the other side, for the bounds check
  std::pair<int64_t, int64_t> range(int64_t i) const { return {offsets[i], offsets[i + 1]}; }
  int64_t node(int64_t p) const {
    const int64_t j = index[p];
    // Checked where it is read: a corrupt Graph must never read out of bounds.
    TORCH_CHECK_INDEX(j >= 0 && j < num_other, "graphattn: edge endpoint ", j, " outside [0, ", num_other,
                      "); rebuild the Graph from a valid edge_index");
    return j;
  }
  int64_t edge(int64_t p) const { return edge_id[p]; }
  // For prefetching only: the endpoint at p, or -1 where it is out of range (node() reports it).
  int64_t peek(int64_t p) const {
    const int64_t j = index[p];
    return j >= 0 && j < num_other ? j : -1;
  }
  // How far a thread working on rows [.., end_row) may look ahead from a row ending at `last`:
  // to the end of its last row. The edges of the next rows follow in memory, so prefetching
  // runs on across row ends (at degree ~16, stopping at each row's end would leave the
  // first edges of every row unprefetched and the pipeline drained).
  int64_t lookahead_end(int64_t /*last*/, int64_t end_row) const { return offsets[end_row]; }
};

// Node i meets every node of its segment; position p is the node itself.
struct SegmentNeighbours {
  const int64_t* ptr;
  int64_t num_segments;
  std::pair<int64_t, int64_t> range(int64_t i) const {
    const int64_t s = std::upper_bound(ptr, ptr + num_segments + 1, i) - ptr - 1;
    return {ptr[s], ptr[s + 1]};
  }
  int64_t node(int64_t p) const { return p; }
  int64_t edge(int64_t p) const { return p; }
  int64_t peek(int64_t p) const { return p; }
  // The next row restarts at its segment's first node: look ahead within the row only.
  int64_t lookahead_end(int64_t last, int64_t /*end_row*/) const { return last; }
};

}  // namespace cpu
}  // namespace graphattn
