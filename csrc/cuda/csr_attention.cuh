// Fused edge-softmax attention over a target-sorted CSR: CUDA kernels and
// their launchers, over the plain structs of params.h (no torch headers).
// Semantics are those of the CPU kernels (csrc/cpu/attention_rows.h).
//
// Work decomposition
// ------------------
// * One warp per row (target row for the forward and dQ, source row for
//   dK/dV). The H*D elements of a row are spread over the lanes in chunks of
//   VEC elements (16 bytes when every row/head stride and pointer allows it,
//   else 1 element): a head is served by a group of G lanes (G a power of two,
//   G >= D/VEC up to 32), so a warp covers 32/G heads per "pass" and the
//   per-head dot products are segmented butterfly sums over the G lanes of the
//   group (log2 G shuffles). A lane holds TC chunks of its head per pass and NP
//   passes at once (all compile-time, so everything lives in registers); wider
//   rows are processed in "head blocks" of NP passes, one after another, each
//   streaming the row's edges again.
// * The column indices (and edge ids) of 32 edges are loaded at once, one per
//   lane, checked against their range, then broadcast by shuffles; per edge
//   the lanes issue all their K and V (or Q and dO) loads before any use.
// * Online softmax per head in float32 registers; out, lse (and dQ, dK, dV)
//   are written once per row.
// * Hub rows (more than kHubDegree edges) are left out by the warp-per-row
//   kernels: a tiny kernel lists them, and a persistent kernel of kHubWarps
//   warps per block takes them one at a time from that list (an atomic work
//   counter). The warps of the block split the row's edges into contiguous
//   ranges and merge their partial results in a fixed order through shared
//   memory (forward: rescaled to the common max, as the lse merge; backward:
//   sums). Which block takes which hub does not change any bit of the result.
// * Backward: the dQ pass (target rows) also computes Delta = rowsum(dO * O) -
//   dlse into a [N_dst, H] scratch and writes dbias; the dK/dV pass walks the
//   transposed CSR, one source row per warp. Deterministic: every output
//   element is written by one lane, and every sum has a fixed order.
//
// Bounds: a CSR endpoint outside [0, N) or an edge id outside [0, E) is never
// dereferenced (the edge is skipped) and sets kErrorIndex in the workspace;
// offsets outside [0, E] or decreasing set kErrorOffsets (the row is treated
// as empty). The binding turns these bits into exceptions.
#pragma once

#include <cstdint>

#include "../params.h"
#include "launch.h"

#ifdef GRAPHATTN_CUDA_EMULATION
#include "emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define GA_DEVICE __device__ __forceinline__
#define GA_GLOBAL __global__
#define GA_LAUNCH_BOUNDS(threads) __launch_bounds__(threads)
#define GA_SHARED __shared__

namespace graphattn {
namespace gpu {
namespace dev {

constexpr unsigned kFullMask = 0xffffffffu;

GA_DEVICE float shfl_xor(float x, int mask) { return __shfl_xor_sync(kFullMask, x, mask); }
GA_DEVICE int64_t shfl(int64_t x, int src_lane) {
  return static_cast<int64_t>(__shfl_sync(kFullMask, static_cast<long long>(x), src_lane));
}
GA_DEVICE void sync_block() { __syncthreads(); }
GA_DEVICE unsigned long long atomic_add(unsigned long long* p, unsigned long long v) { return atomicAdd(p, v); }
GA_DEVICE void atomic_or(unsigned long long* p, unsigned long long v) { atomicOr(p, v); }
template <typename R>
GA_DEVICE R ldg(const R* p) {
  return __ldg(p);
}
// int64_t is `long` here; __ldg has overloads for long long.
template <>
GA_DEVICE int64_t ldg<int64_t>(const int64_t* p) {
  return static_cast<int64_t>(__ldg(reinterpret_cast<const long long*>(p)));
}
GA_DEVICE float fast_exp(float x) { return __expf(x); }

}  // namespace dev

namespace host {

inline cudaError_t memset_async(void* p, int value, size_t bytes, cudaStream_t stream) {
  return cudaMemsetAsync(p, value, bytes, stream);
}

// Blocks of `threads` threads that fit on the device at once (a persistent grid).
template <typename Kernel>
inline int resident_blocks(Kernel kernel, int threads) {
  int device = 0, sms = 1, per_sm = 1;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0) != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: fall back to a small grid
    return 64;
  }
  return sms * (per_sm > 0 ? per_sm : 1);
}

inline cudaError_t last_error() { return cudaGetLastError(); }

template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), unsigned grid, unsigned block, cudaStream_t stream, Args... args) {
  kernel<<<grid, block, 0, stream>>>(args...);
}

}  // namespace host
}  // namespace gpu
}  // namespace graphattn
#endif  // GRAPHATTN_CUDA_EMULATION

namespace graphattn {
namespace gpu {
namespace detail {
// Everything below has internal linkage: each per-dtype .cu file gets its own copy.
namespace {

constexpr int kWarpSize = 32;
constexpr int kRowWarps = 4;            // warp-per-row kernels: 4 rows per block of 128 threads
constexpr int kHubWarps = 8;            // hub kernels: 8 warps share one row
constexpr int64_t kHubDegree = 256;     // rows with more edges go to the hub kernels
constexpr int kClassifyThreads = 256;
constexpr float kNegInf = -__builtin_huge_valf();

// ---------------------------------------------------------------------------
// Element types and vector loads
// ---------------------------------------------------------------------------
GA_DEVICE float to_float(float x) { return x; }
GA_DEVICE float to_float(__half x) { return __half2float(x); }
GA_DEVICE float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
GA_DEVICE T from_float(float x);
template <>
GA_DEVICE float from_float<float>(float x) {
  return x;
}
template <>
GA_DEVICE __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
GA_DEVICE __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// The raw (bit) type of `Bytes` bytes, loaded in one instruction.
template <int Bytes>
struct RawOf;
template <>
struct RawOf<2> {
  using type = unsigned short;
};
template <>
struct RawOf<4> {
  using type = unsigned int;
};
template <>
struct RawOf<8> {
  using type = uint2;
};
template <>
struct RawOf<16> {
  using type = uint4;
};

// One kernel configuration: element type, chunk width VEC (elements per load),
// TC chunks of a head per lane and pass, NP passes held at once.
template <typename T_, int VEC_, int TC_, int NP_>
struct Cfg {
  using T = T_;
  static constexpr int VEC = VEC_, TC = TC_, NP = NP_;
  static constexpr int SLOTS = NP * TC;   // chunks per lane
  static constexpr int N = SLOTS * VEC;   // elements per lane (per row tensor)
  using Raw = typename RawOf<static_cast<int>(sizeof(T)) * VEC>::type;
  static_assert(SLOTS <= 32, "chunk masks are 32-bit");
};

template <typename C>
GA_DEVICE typename C::Raw load_raw(const typename C::T* p) {
  return dev::ldg(reinterpret_cast<const typename C::Raw*>(p));
}

// A chunk seen as raw bits or as its elements.
template <typename C>
union Chunk {
  typename C::Raw raw;
  typename C::T e[C::VEC];
  GA_DEVICE Chunk() : raw() {}
};

template <typename C>
GA_DEVICE void unpack(const typename C::Raw& raw, float* f) {
  Chunk<C> c;
  c.raw = raw;
#pragma unroll
  for (int u = 0; u < C::VEC; ++u) f[u] = to_float(c.e[u]);
}

template <typename C>
GA_DEVICE void store_chunk(typename C::T* p, const float* f, float mul) {
  Chunk<C> c;
#pragma unroll
  for (int u = 0; u < C::VEC; ++u) c.e[u] = from_float<typename C::T>(f[u] * mul);
  *reinterpret_cast<typename C::Raw*>(p) = c.raw;
}

template <typename T>
GA_DEVICE float load_scalar(const T* p) {
  union {
    typename RawOf<static_cast<int>(sizeof(T))>::type raw;
    T value;
  } c;
  c.raw = dev::ldg(reinterpret_cast<const decltype(c.raw)*>(p));
  return to_float(c.value);
}

// ---------------------------------------------------------------------------
// Lane layout
// ---------------------------------------------------------------------------
// Computed on the host, the same for every lane.
struct Geometry {
  int group;           // G: lanes per head, a power of two <= 32
  int heads_per_pass;  // 32 / G
  int chunks_k;        // D / VEC: chunks of a q/k row head
  int chunks_v;        // Dv / VEC: chunks of a v/out row head
  int head_blocks;     // ceil(passes / NP)
};

// Which heads and chunks this lane holds in head block `hb`: pass pp is head
// head[pp]; chunk t of a pass is element (sub + G*t)*VEC of that head. Bit
// pp*TC+t of kmask / vmask says the chunk exists in the D / Dv layout.
template <typename C>
struct LaneMap {
  int sub;
  int group;
  int head[C::NP];
  uint32_t kmask, vmask, hmask;  // hmask bit pp: head[pp] < H

  GA_DEVICE LaneMap(const Geometry& g, int hb, int64_t num_heads, int lane) {
    group = g.group;
    sub = lane & (g.group - 1);
    const int slot = lane / g.group;
    kmask = vmask = hmask = 0;
#pragma unroll
    for (int pp = 0; pp < C::NP; ++pp) {
      head[pp] = (hb * C::NP + pp) * g.heads_per_pass + slot;
      const bool ok = head[pp] < num_heads;
      if (ok) hmask |= 1u << pp;
#pragma unroll
      for (int t = 0; t < C::TC; ++t) {
        const int c = sub + g.group * t;
        if (ok && c < g.chunks_k) kmask |= 1u << (pp * C::TC + t);
        if (ok && c < g.chunks_v) vmask |= 1u << (pp * C::TC + t);
      }
    }
  }
  GA_DEVICE bool head_ok(int pp) const { return (hmask >> pp) & 1u; }
  GA_DEVICE bool k_ok(int s) const { return (kmask >> s) & 1u; }
  GA_DEVICE bool v_ok(int s) const { return (vmask >> s) & 1u; }
  // The lane that writes per-head values (lse, Delta, dbias).
  GA_DEVICE bool leader(int pp) const { return sub == 0 && head_ok(pp); }
  GA_DEVICE int elem(int t) const { return (sub + group * t) * C::VEC; }
};

// Sum over the G lanes of each group (butterfly: every lane of the group ends
// with the same bits).
GA_DEVICE float group_sum(float x, int group) {
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1)
    if (off < group) x += dev::shfl_xor(x, off);
  return x;
}

// Raw chunks of row `row` of a [rows, H, dim] tensor, zero where absent.
template <typename C>
GA_DEVICE void load_row_raw(const RowsParams& r, int64_t row, const LaneMap<C>& map, uint32_t mask,
                            typename C::Raw (&raw)[C::SLOTS]) {
  const typename C::T* base = static_cast<const typename C::T*>(r.data) + row * r.row_stride;
#pragma unroll
  for (int pp = 0; pp < C::NP; ++pp) {
#pragma unroll
    for (int t = 0; t < C::TC; ++t) {
      const int s = pp * C::TC + t;
      raw[s] = typename C::Raw{};
      if ((mask >> s) & 1u) raw[s] = load_raw<C>(base + map.head[pp] * r.head_stride + map.elem(t));
    }
  }
}

template <typename C>
GA_DEVICE void load_row(const RowsParams& r, int64_t row, const LaneMap<C>& map, uint32_t mask,
                        float (&dst)[C::N]) {
  typename C::Raw raw[C::SLOTS];
  load_row_raw<C>(r, row, map, mask, raw);
#pragma unroll
  for (int s = 0; s < C::SLOTS; ++s) unpack<C>(raw[s], dst + s * C::VEC);
}

// Stores `mul * src` into row `row` of a contiguous [rows, H, dim] tensor.
template <typename C>
GA_DEVICE void store_row(void* data, int64_t num_heads, int dim, int64_t row, const LaneMap<C>& map,
                         uint32_t mask, const float (&src)[C::N], const float (&mul)[C::NP]) {
  typename C::T* base = static_cast<typename C::T*>(data) + row * num_heads * dim;
#pragma unroll
  for (int pp = 0; pp < C::NP; ++pp) {
#pragma unroll
    for (int t = 0; t < C::TC; ++t) {
      const int s = pp * C::TC + t;
      if ((mask >> s) & 1u)
        store_chunk<C>(base + static_cast<int64_t>(map.head[pp]) * dim + map.elem(t), src + s * C::VEC, mul[pp]);
    }
  }
}

template <typename C>
GA_DEVICE float dot_slots(const float (&a)[C::N], const float* b, int pp) {
  float acc = 0.f;
#pragma unroll
  for (int t = 0; t < C::TC; ++t)
#pragma unroll
    for (int u = 0; u < C::VEC; ++u) acc = fmaf(a[(pp * C::TC + t) * C::VEC + u], b[(pp * C::TC + t) * C::VEC + u], acc);
  return acc;
}

template <typename C>
GA_DEVICE void unpack_all(const typename C::Raw (&raw)[C::SLOTS], float (&f)[C::N]) {
#pragma unroll
  for (int s = 0; s < C::SLOTS; ++s) unpack<C>(raw[s], f + s * C::VEC);
}

// ---------------------------------------------------------------------------
// Rows and edges
// ---------------------------------------------------------------------------
struct Status {
  unsigned long long* flags;      // kError* bits
  unsigned long long* hub_count;  // hubs listed
  unsigned long long* hub_next;   // next list entry to take
  int64_t* hub_rows;              // the list
};

// Edge positions [*first, *last) of row i; an invalid range reads as empty
// (the classify kernel has flagged it).
GA_DEVICE void row_range(const int64_t* offsets, int64_t i, int64_t num_edges, int64_t* first, int64_t* last) {
  const int64_t b = dev::ldg(offsets + i), e = dev::ldg(offsets + i + 1);
  const bool ok = 0 <= b && b <= e && e <= num_edges;
  *first = ok ? b : 0;
  *last = ok ? e : 0;
}

// Lists the rows of more than kHubDegree edges; checks the offsets.
GA_GLOBAL void GA_LAUNCH_BOUNDS(kClassifyThreads)
    classify_rows_kernel(const int64_t* offsets, int64_t num_rows, int64_t num_edges, Status st) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r == 0 && (offsets[0] != 0 || offsets[num_rows] != num_edges)) dev::atomic_or(st.flags, kErrorOffsets);
  if (r >= num_rows) return;
  const int64_t b = offsets[r], e = offsets[r + 1];
  if (!(0 <= b && b <= e && e <= num_edges)) {
    dev::atomic_or(st.flags, kErrorOffsets);
    return;
  }
  if (e - b > kHubDegree) st.hub_rows[dev::atomic_add(st.hub_count, 1ull)] = r;
}

// Calls body(node, edge) for each valid edge position in [first, last), in
// order, warp-uniformly. 32 (node, edge id) pairs are loaded at a time.
template <typename Body>
GA_DEVICE void for_each_edge(const PatternParams& pat, int64_t first, int64_t last, int64_t num_other,
                             int64_t num_edges, unsigned long long* flags, int lane, Body&& body) {
  for (int64_t base = first; base < last; base += kWarpSize) {
    const int n = static_cast<int>(last - base < kWarpSize ? last - base : kWarpSize);
    int64_t my_node = -1, my_edge = 0;
    if (lane < n) {
      const int64_t node = dev::ldg(pat.index + base + lane);
      const int64_t edge = dev::ldg(pat.edge_id + base + lane);
      if (static_cast<uint64_t>(node) < static_cast<uint64_t>(num_other) &&
          static_cast<uint64_t>(edge) < static_cast<uint64_t>(num_edges)) {
        my_node = node;
        my_edge = edge;
      } else {
        dev::atomic_or(flags, kErrorIndex);
      }
    }
    for (int t = 0; t < n; ++t) {
      const int64_t node = dev::shfl(my_node, t);
      const int64_t edge = dev::shfl(my_edge, t);
      if (node >= 0) body(node, edge);
    }
  }
}

template <typename C>
GA_DEVICE void load_bias(const ForwardParams& p, int64_t edge, const LaneMap<C>& map, float (&b)[C::NP]) {
#pragma unroll
  for (int pp = 0; pp < C::NP; ++pp) {
    b[pp] = 0.f;
    if (p.bias != nullptr && map.head_ok(pp))
      b[pp] = load_scalar(static_cast<const typename C::T*>(p.bias) + edge * p.bias_edge_stride +
                          map.head[pp] * p.bias_head_stride);
  }
}

// exp(s - lse), 0 where the row has no weight (lse = -inf).
GA_DEVICE float prob(float s, float lse) { return lse == kNegInf ? 0.f : dev::fast_exp(s - lse); }

// Sums `x` of every warp of the block into warp 0, in warp order. `buf` holds
// (kHubWarps - 1) * M * 32 floats. Every thread of the block must call it.
template <int M>
GA_DEVICE void block_sum(float (&x)[M], float* buf, int warp, int lane) {
  if (warp > 0) {
#pragma unroll
    for (int n = 0; n < M; ++n) buf[((warp - 1) * M + n) * kWarpSize + lane] = x[n];
  }
  dev::sync_block();
  if (warp == 0) {
    for (int w = 1; w < kHubWarps; ++w)
#pragma unroll
      for (int n = 0; n < M; ++n) x[n] += buf[((w - 1) * M + n) * kWarpSize + lane];
  }
  dev::sync_block();
}

// Takes the next hub row from the list (block-uniform); -1 when none is left.
GA_DEVICE int64_t next_hub(const Status& st, int64_t* slot) {
  if (threadIdx.x == 0) {
    const unsigned long long w = dev::atomic_add(st.hub_next, 1ull);
    *slot = w < *st.hub_count ? st.hub_rows[w] : -1;
  }
  dev::sync_block();
  const int64_t row = *slot;
  dev::sync_block();
  return row;
}

// The part [*first, *last) of a hub row's edges that warp `warp` takes.
GA_DEVICE void warp_share(int64_t first, int64_t last, int warp, int64_t* w_first, int64_t* w_last) {
  const int64_t per = (last - first + kHubWarps - 1) / kHubWarps;
  const int64_t b = first + per * warp;
  *w_first = b < last ? b : last;
  *w_last = b + per < last ? b + per : last;
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
template <typename C>
struct ForwardState {
  float q[C::N];
  float acc[C::N];
  float m[C::NP];
  float l[C::NP];
};

template <typename C>
GA_DEVICE void forward_begin(const ForwardParams& p, int64_t i, const LaneMap<C>& map, ForwardState<C>& st) {
  load_row<C>(p.q, i, map, map.kmask, st.q);
#pragma unroll
  for (int n = 0; n < C::N; ++n) st.acc[n] = 0.f;
#pragma unroll
  for (int pp = 0; pp < C::NP; ++pp) {
    st.m[pp] = kNegInf;
    st.l[pp] = 0.f;
  }
}

template <typename C>
GA_DEVICE void forward_edges(const ForwardParams& p, int64_t first, int64_t last, int64_t num_edges,
                             unsigned long long* flags, int lane, const LaneMap<C>& map, ForwardState<C>& st) {
  const float scale = static_cast<float>(p.scale);
  for_each_edge(p.by_target, first, last, p.num_src, num_edges, flags, lane, [&](int64_t j, int64_t edge) {
    typename C::Raw kr[C::SLOTS], vr[C::SLOTS];
    float b[C::NP];
    load_row_raw<C>(p.k, j, map, map.kmask, kr);
    load_row_raw<C>(p.v, j, map, map.vmask, vr);
    load_bias<C>(p, edge, map, b);
    float kf[C::N], vf[C::N], corr[C::NP], w[C::NP];
    unpack_all<C>(kr, kf);
#pragma unroll
    for (int pp = 0; pp < C::NP; ++pp) {
      const float s = scale * group_sum(dot_slots<C>(st.q, kf, pp), map.group) + b[pp];
      // fmaxf ignores a NaN, which would make a NaN score seen before any finite one look masked (dead).
      const float m_new = s != s ? s : fmaxf(st.m[pp], s);
      const bool dead = m_new == kNegInf;  // nothing but -inf scores so far
      corr[pp] = dead ? 1.f : dev::fast_exp(st.m[pp] - m_new);
      w[pp] = dead ? 0.f : dev::fast_exp(s - m_new);
      st.m[pp] = m_new;
      st.l[pp] = st.l[pp] * corr[pp] + w[pp];
    }
    unpack_all<C>(vr, vf);
#pragma unroll
    for (int pp = 0; pp < C::NP; ++pp) {
#pragma unroll
      for (int n = pp * C::TC * C::VEC; n < (pp + 1) * C::TC * C::VEC; ++n)
        st.acc[n] = fmaf(w[pp], vf[n], st.acc[n] * corr[pp]);
    }
  });
}

template <typename C>
GA_DEVICE void forward_store(const ForwardParams& p, int64_t i, const LaneMap<C>& map, const ForwardState<C>& st) {
  float inv[C::NP];
#pragma unroll
  for (int pp = 0; pp < C::NP; ++pp) {
    // A row without edges: out = 0 and lse = -inf (l is 0).
    inv[pp] = st.l[pp] > 0.f ? 1.f / st.l[pp] : 0.f;
    if (map.leader(pp))
      static_cast<float*>(p.lse)[i * p.num_heads + map.head[pp]] =
          st.l[pp] == 0.f ? kNegInf : st.m[pp] + logf(st.l[pp]);  // a NaN sum keeps its NaN
  }
  store_row<C>(p.out, p.num_heads, static_cast<int>(p.value_dim), i, map, map.vmask, st.acc, inv);
}

template <typename C>
GA_GLOBAL void GA_LAUNCH_BOUNDS(kRowWarps* kWarpSize)
    forward_rows_kernel(ForwardParams p, Geometry g, int64_t num_edges, Status status) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (i >= p.num_dst) return;
  int64_t first, last;
  row_range(p.by_target.offsets, i, num_edges, &first, &last);
  if (last - first > kHubDegree) return;  // forward_hubs_kernel's
  for (int hb = 0; hb < g.head_blocks; ++hb) {
    const LaneMap<C> map(g, hb, p.num_heads, lane);
    ForwardState<C> st;
    forward_begin<C>(p, i, map, st);
    forward_edges<C>(p, first, last, num_edges, status.flags, lane, map, st);
    forward_store<C>(p, i, map, st);
  }
}

template <typename C>
GA_GLOBAL void GA_LAUNCH_BOUNDS(kHubWarps* kWarpSize)
    forward_hubs_kernel(ForwardParams p, Geometry g, int64_t num_edges, Status status) {
  GA_SHARED float buf[(kHubWarps - 1) * C::N * kWarpSize];
  GA_SHARED float maxima[kHubWarps * C::NP * kWarpSize];
  GA_SHARED int64_t work;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (;;) {
    const int64_t i = next_hub(status, &work);
    if (i < 0) return;
    int64_t first, last, w_first, w_last;
    row_range(p.by_target.offsets, i, num_edges, &first, &last);
    warp_share(first, last, warp, &w_first, &w_last);
    for (int hb = 0; hb < g.head_blocks; ++hb) {
      const LaneMap<C> map(g, hb, p.num_heads, lane);
      ForwardState<C> st;
      forward_begin<C>(p, i, map, st);
      forward_edges<C>(p, w_first, w_last, num_edges, status.flags, lane, map, st);
      // Merge: rescale every warp's partial to the common max, then sum in warp order.
#pragma unroll
      for (int pp = 0; pp < C::NP; ++pp) maxima[(warp * C::NP + pp) * kWarpSize + lane] = st.m[pp];
      dev::sync_block();
#pragma unroll
      for (int pp = 0; pp < C::NP; ++pp) {
        float top = kNegInf;
        for (int w = 0; w < kHubWarps; ++w) top = fmaxf(top, maxima[(w * C::NP + pp) * kWarpSize + lane]);
        const float f = top == kNegInf ? 0.f : dev::fast_exp(st.m[pp] - top);
        st.m[pp] = top;
        st.l[pp] *= f;
#pragma unroll
        for (int n = pp * C::TC * C::VEC; n < (pp + 1) * C::TC * C::VEC; ++n) st.acc[n] *= f;
      }
      dev::sync_block();
      block_sum<C::N>(st.acc, buf, warp, lane);
      block_sum<C::NP>(st.l, buf, warp, lane);
      if (warp == 0) forward_store<C>(p, i, map, st);
    }
  }
}

// ---------------------------------------------------------------------------
// Backward, pass 1: target rows -> Delta, dQ, dbias
// ---------------------------------------------------------------------------
template <typename C>
struct TargetState {
  float q[C::N];
  float go[C::N];
  float dq[C::N];
  float delta[C::NP];
  float lse[C::NP];
};

template <typename C>
GA_DEVICE void target_begin(const BackwardParams& b, int64_t i, const LaneMap<C>& map, TargetState<C>& st) {
  const ForwardParams& p = b.fwd;
  load_row<C>(p.q, i, map, map.kmask, st.q);
  load_row<C>(b.grad_out, i, map, map.vmask, st.go);
  float o[C::N];
  const RowsParams out{p.out, p.num_heads * p.value_dim, p.value_dim};
  load_row<C>(out, i, map, map.vmask, o);
#pragma unroll
  for (int pp = 0; pp < C::NP; ++pp) {
    const float d = group_sum(dot_slots<C>(st.go, o, pp), map.group);
    const int64_t at = i * p.num_heads + map.head[pp];
    const float dlse = (b.grad_lse != nullptr && map.head_ok(pp)) ? static_cast<const float*>(b.grad_lse)[at] : 0.f;
    st.delta[pp] = d - dlse;
    st.lse[pp] = map.head_ok(pp) ? static_cast<const float*>(p.lse)[at] : kNegInf;
  }
#pragma unroll
  for (int n = 0; n < C::N; ++n) st.dq[n] = 0.f;
}

template <typename C>
GA_DEVICE void target_edges(const BackwardParams& b, int64_t first, int64_t last, int64_t num_edges,
                            unsigned long long* flags, int lane, const LaneMap<C>& map, TargetState<C>& st) {
  const ForwardParams& p = b.fwd;
  const float scale = static_cast<float>(p.scale);
  for_each_edge(p.by_target, first, last, p.num_src, num_edges, flags, lane, [&](int64_t j, int64_t edge) {
    typename C::Raw kr[C::SLOTS], vr[C::SLOTS];
    float bias[C::NP];
    load_row_raw<C>(p.k, j, map, map.kmask, kr);
    load_row_raw<C>(p.v, j, map, map.vmask, vr);
    load_bias<C>(p, edge, map, bias);
    float kf[C::N], vf[C::N];
    unpack_all<C>(kr, kf);
    unpack_all<C>(vr, vf);
#pragma unroll
    for (int pp = 0; pp < C::NP; ++pp) {
      const float s = scale * group_sum(dot_slots<C>(st.q, kf, pp), map.group) + bias[pp];
      const float dp = group_sum(dot_slots<C>(st.go, vf, pp), map.group);
      const float ds = prob(s, st.lse[pp]) * (dp - st.delta[pp]);
#pragma unroll
      for (int n = pp * C::TC * C::VEC; n < (pp + 1) * C::TC * C::VEC; ++n) st.dq[n] = fmaf(ds, kf[n], st.dq[n]);
      if (b.grad_bias != nullptr && map.leader(pp))
        static_cast<typename C::T*>(b.grad_bias)[edge * p.num_heads + map.head[pp]] = from_float<typename C::T>(ds);
    }
  });
}

template <typename C>
GA_DEVICE void target_store(const BackwardParams& b, int64_t i, const LaneMap<C>& map, const TargetState<C>& st) {
  const ForwardParams& p = b.fwd;
  float mul[C::NP];
#pragma unroll
  for (int pp = 0; pp < C::NP; ++pp) {
    mul[pp] = static_cast<float>(p.scale);
    if (map.leader(pp)) static_cast<float*>(b.delta)[i * p.num_heads + map.head[pp]] = st.delta[pp];
  }
  store_row<C>(b.grad_q, p.num_heads, static_cast<int>(p.head_dim), i, map, map.kmask, st.dq, mul);
}

template <typename C>
GA_GLOBAL void GA_LAUNCH_BOUNDS(kRowWarps* kWarpSize)
    target_rows_kernel(BackwardParams b, Geometry g, int64_t num_edges, Status status) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (i >= b.fwd.num_dst) return;
  int64_t first, last;
  row_range(b.fwd.by_target.offsets, i, num_edges, &first, &last);
  if (last - first > kHubDegree) return;  // target_hubs_kernel's
  for (int hb = 0; hb < g.head_blocks; ++hb) {
    const LaneMap<C> map(g, hb, b.fwd.num_heads, lane);
    TargetState<C> st;
    target_begin<C>(b, i, map, st);
    target_edges<C>(b, first, last, num_edges, status.flags, lane, map, st);
    target_store<C>(b, i, map, st);
  }
}

template <typename C>
GA_GLOBAL void GA_LAUNCH_BOUNDS(kHubWarps* kWarpSize)
    target_hubs_kernel(BackwardParams b, Geometry g, int64_t num_edges, Status status) {
  GA_SHARED float buf[(kHubWarps - 1) * C::N * kWarpSize];
  GA_SHARED int64_t work;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (;;) {
    const int64_t i = next_hub(status, &work);
    if (i < 0) return;
    int64_t first, last, w_first, w_last;
    row_range(b.fwd.by_target.offsets, i, num_edges, &first, &last);
    warp_share(first, last, warp, &w_first, &w_last);
    for (int hb = 0; hb < g.head_blocks; ++hb) {
      const LaneMap<C> map(g, hb, b.fwd.num_heads, lane);
      TargetState<C> st;
      target_begin<C>(b, i, map, st);  // every warp needs Delta and lse
      target_edges<C>(b, w_first, w_last, num_edges, status.flags, lane, map, st);
      block_sum<C::N>(st.dq, buf, warp, lane);
      if (warp == 0) target_store<C>(b, i, map, st);
    }
  }
}

// ---------------------------------------------------------------------------
// Backward, pass 2: source rows (transposed CSR) -> dK, dV
// ---------------------------------------------------------------------------
template <typename C>
struct SourceState {
  float k[C::N];
  float v[C::N];
  float dk[C::N];
  float dv[C::N];
};

template <typename C>
GA_DEVICE void source_begin(const BackwardParams& b, int64_t j, const LaneMap<C>& map, SourceState<C>& st) {
  load_row<C>(b.fwd.k, j, map, map.kmask, st.k);
  load_row<C>(b.fwd.v, j, map, map.vmask, st.v);
#pragma unroll
  for (int n = 0; n < C::N; ++n) {
    st.dk[n] = 0.f;
    st.dv[n] = 0.f;
  }
}

template <typename C>
GA_DEVICE void source_edges(const BackwardParams& b, int64_t first, int64_t last, int64_t num_edges,
                            unsigned long long* flags, int lane, const LaneMap<C>& map, SourceState<C>& st) {
  const ForwardParams& p = b.fwd;
  const float scale = static_cast<float>(p.scale);
  for_each_edge(b.by_source, first, last, p.num_dst, num_edges, flags, lane, [&](int64_t i, int64_t edge) {
    typename C::Raw qr[C::SLOTS], gr[C::SLOTS];
    float bias[C::NP], lse[C::NP], delta[C::NP];
    load_row_raw<C>(p.q, i, map, map.kmask, qr);
    load_row_raw<C>(b.grad_out, i, map, map.vmask, gr);
    load_bias<C>(p, edge, map, bias);
#pragma unroll
    for (int pp = 0; pp < C::NP; ++pp) {
      const int64_t at = i * p.num_heads + map.head[pp];
      lse[pp] = map.head_ok(pp) ? dev::ldg(static_cast<const float*>(p.lse) + at) : kNegInf;
      delta[pp] = map.head_ok(pp) ? dev::ldg(static_cast<const float*>(b.delta) + at) : 0.f;
    }
    float qf[C::N], gf[C::N];
    unpack_all<C>(qr, qf);
    unpack_all<C>(gr, gf);
#pragma unroll
    for (int pp = 0; pp < C::NP; ++pp) {
      const float s = scale * group_sum(dot_slots<C>(st.k, qf, pp), map.group) + bias[pp];
      const float dp = group_sum(dot_slots<C>(st.v, gf, pp), map.group);
      const float pr = prob(s, lse[pp]);
      const float ds = pr * (dp - delta[pp]);
#pragma unroll
      for (int n = pp * C::TC * C::VEC; n < (pp + 1) * C::TC * C::VEC; ++n) {
        st.dv[n] = fmaf(pr, gf[n], st.dv[n]);
        st.dk[n] = fmaf(ds, qf[n], st.dk[n]);
      }
    }
  });
}

template <typename C>
GA_DEVICE void source_store(const BackwardParams& b, int64_t j, const LaneMap<C>& map, const SourceState<C>& st) {
  const ForwardParams& p = b.fwd;
  float scale[C::NP], one[C::NP];
#pragma unroll
  for (int pp = 0; pp < C::NP; ++pp) {
    scale[pp] = static_cast<float>(p.scale);
    one[pp] = 1.f;
  }
  store_row<C>(b.grad_k, p.num_heads, static_cast<int>(p.head_dim), j, map, map.kmask, st.dk, scale);
  store_row<C>(b.grad_v, p.num_heads, static_cast<int>(p.value_dim), j, map, map.vmask, st.dv, one);
}

template <typename C>
GA_GLOBAL void GA_LAUNCH_BOUNDS(kRowWarps* kWarpSize)
    source_rows_kernel(BackwardParams b, Geometry g, int64_t num_edges, Status status) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (j >= b.fwd.num_src) return;
  int64_t first, last;
  row_range(b.by_source.offsets, j, num_edges, &first, &last);
  if (last - first > kHubDegree) return;  // source_hubs_kernel's
  for (int hb = 0; hb < g.head_blocks; ++hb) {
    const LaneMap<C> map(g, hb, b.fwd.num_heads, lane);
    SourceState<C> st;
    source_begin<C>(b, j, map, st);
    source_edges<C>(b, first, last, num_edges, status.flags, lane, map, st);
    source_store<C>(b, j, map, st);
  }
}

template <typename C>
GA_GLOBAL void GA_LAUNCH_BOUNDS(kHubWarps* kWarpSize)
    source_hubs_kernel(BackwardParams b, Geometry g, int64_t num_edges, Status status) {
  GA_SHARED float buf[(kHubWarps - 1) * C::N * kWarpSize];
  GA_SHARED int64_t work;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (;;) {
    const int64_t j = next_hub(status, &work);
    if (j < 0) return;
    int64_t first, last, w_first, w_last;
    row_range(b.by_source.offsets, j, num_edges, &first, &last);
    warp_share(first, last, warp, &w_first, &w_last);
    for (int hb = 0; hb < g.head_blocks; ++hb) {
      const LaneMap<C> map(g, hb, b.fwd.num_heads, lane);
      SourceState<C> st;
      source_begin<C>(b, j, map, st);
      source_edges<C>(b, w_first, w_last, num_edges, status.flags, lane, map, st);
      block_sum<C::N>(st.dk, buf, warp, lane);
      block_sum<C::N>(st.dv, buf, warp, lane);
      if (warp == 0) source_store<C>(b, j, map, st);
    }
  }
}

// ---------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------
inline int pow2_ceil(int64_t x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The chunk width and lane layout of one call.
struct Plan {
  int vec;     // 1 or 16 / sizeof(T)
  int tc;      // chunks per lane and pass: a power of two
  int passes;  // ceil(H / heads_per_pass)
  Geometry g;
};

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Can rows of `r` ([rows, H, dim]) be read in chunks of `vec` elements?
inline bool vector_rows(const RowsParams& r, int64_t rows, int64_t heads, int64_t dim, int vec) {
  return dim % vec == 0 && aligned16(r.data) && (rows <= 1 || r.row_stride % vec == 0) &&
         (heads <= 1 || r.head_stride % vec == 0);
}

inline Plan make_plan(int64_t heads, int64_t dim_k, int64_t dim_v, int vec) {
  Plan plan{};
  plan.vec = vec;
  plan.g.chunks_k = static_cast<int>(dim_k / vec);
  plan.g.chunks_v = static_cast<int>(dim_v / vec);
  const int chunks = plan.g.chunks_k > plan.g.chunks_v ? plan.g.chunks_k : plan.g.chunks_v;
  plan.g.group = pow2_ceil(chunks < kWarpSize ? chunks : kWarpSize);
  plan.g.heads_per_pass = kWarpSize / plan.g.group;
  plan.tc = pow2_ceil(ceil_div(chunks, plan.g.group));
  plan.passes = static_cast<int>(ceil_div(heads, plan.g.heads_per_pass));
  return plan;
}

// Passes held at once: the smallest compiled NP that covers every pass, capped.
inline int choose_np(int passes, int max_np) {
  int np = 1;
  while (np < passes && np < max_np) np *= 2;
  return np;
}

// The compiled configurations: chunks of 16 bytes for rows up to 256 elements
// per head, or single elements for up to 256 (TC up to 8); NP in {1, 2, 4}
// (capped at MaxNP, the kernel's register budget). Calls f(Cfg<...>{}) and
// returns true, or returns false when (vec, tc, np) is not compiled.
template <typename T, int VEC, int TC, int MaxNP, typename F>
bool with_np(int np, F&& f) {
  if (np == 1) return f(Cfg<T, VEC, TC, 1>{}), true;
  if constexpr (MaxNP >= 2)
    if (np == 2) return f(Cfg<T, VEC, TC, 2>{}), true;
  if constexpr (MaxNP >= 4)
    if (np == 4) return f(Cfg<T, VEC, TC, 4>{}), true;
  return false;
}

template <typename T, int VEC, int MaxNP, typename F>
bool with_tc(int tc, int np, F&& f) {
  constexpr int max_tc = kMaxHeadDim / (VEC * kWarpSize) > 1 ? static_cast<int>(kMaxHeadDim / (VEC * kWarpSize)) : 1;
  if (tc == 1) return with_np<T, VEC, 1, MaxNP>(np, f);
  if constexpr (max_tc >= 2)
    if (tc == 2) return with_np<T, VEC, 2, MaxNP>(np, f);
  if constexpr (max_tc >= 4)
    if (tc == 4) return with_np<T, VEC, 4, MaxNP>(np, f);
  if constexpr (max_tc >= 8)
    if (tc == 8) return with_np<T, VEC, 8, MaxNP>(np, f);
  return false;
}

template <typename T, int MaxNP, typename F>
bool with_config(const Plan& plan, int np, F&& f) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  if (plan.vec == kVec) return with_tc<T, kVec, MaxNP>(plan.tc, np, f);
  if (plan.vec == 1) return with_tc<T, 1, MaxNP>(plan.tc, np, f);
  return false;
}

// Register budgets: the forward holds q, acc (and a row of k, v) per lane; the
// backward passes hold three or four such rows.
constexpr int kForwardMaxNP = 4;
constexpr int kBackwardMaxNP = 2;

inline Status status_at(int64_t* workspace, int which, int64_t list_offset) {
  auto* words = reinterpret_cast<unsigned long long*>(workspace);
  return Status{words, words + 1 + 2 * which, words + 2 + 2 * which, workspace + 8 + list_offset};
}

inline unsigned grid_for(int64_t rows, int64_t per_block) { return static_cast<unsigned>(ceil_div(rows, per_block)); }

inline void classify(const int64_t* offsets, int64_t rows, int64_t num_edges, const Status& st, cudaStream_t s) {
  const unsigned grid = rows > 0 ? grid_for(rows, kClassifyThreads) : 1;
  host::launch(classify_rows_kernel, grid, kClassifyThreads, s, offsets, rows, num_edges, st);
}

// Persistent grid of the hub kernel: what fits on the device, no more blocks
// than there can be hubs.
template <typename Kernel>
unsigned hub_grid(Kernel kernel, int64_t num_edges, int64_t rows) {
  int64_t grid = host::resident_blocks(kernel, kHubWarps * kWarpSize);
  const int64_t max_hubs = num_edges / (kHubDegree + 1);
  if (grid > max_hubs) grid = max_hubs;
  if (grid > rows) grid = rows;
  return static_cast<unsigned>(grid > 0 ? grid : 1);
}

template <typename T>
cudaError_t forward_launch(const ForwardParams& p, int64_t num_edges, int64_t* workspace, cudaStream_t stream) {
  if (cudaError_t e = host::memset_async(workspace, 0, 8 * sizeof(int64_t), stream); e != cudaSuccess) return e;
  const Status st = status_at(workspace, 0, 0);
  classify(p.by_target.offsets, p.num_dst, num_edges, st, stream);
  if (p.num_dst == 0 || p.num_heads == 0) return host::last_error();
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const bool vec = vector_rows(p.q, p.num_dst, p.num_heads, p.head_dim, kVec) &&
                   vector_rows(p.k, p.num_src, p.num_heads, p.head_dim, kVec) &&
                   vector_rows(p.v, p.num_src, p.num_heads, p.value_dim, kVec) && aligned16(p.out);
  Plan plan = make_plan(p.num_heads, p.head_dim, p.value_dim, vec ? kVec : 1);
  const int np = choose_np(plan.passes, kForwardMaxNP);
  plan.g.head_blocks = static_cast<int>(ceil_div(plan.passes, np));
  const bool ok = with_config<T, kForwardMaxNP>(plan, np, [&](auto cfg) {
    using C = decltype(cfg);
    host::launch(forward_rows_kernel<C>, grid_for(p.num_dst, kRowWarps), kRowWarps * kWarpSize, stream, p, plan.g,
                 num_edges, st);
    if (num_edges > kHubDegree)
      host::launch(forward_hubs_kernel<C>, hub_grid(forward_hubs_kernel<C>, num_edges, p.num_dst),
                   kHubWarps * kWarpSize, stream, p, plan.g, num_edges, st);
  });
  if (!ok) return cudaErrorInvalidValue;  // head dim beyond kMaxHeadDim: the binding rejects it first
  return host::last_error();
}

template <typename T>
cudaError_t backward_launch(const BackwardParams& b, int64_t num_edges, int64_t* workspace, cudaStream_t stream) {
  const ForwardParams& p = b.fwd;
  if (cudaError_t e = host::memset_async(workspace, 0, 8 * sizeof(int64_t), stream); e != cudaSuccess) return e;
  const Status by_target = status_at(workspace, 0, 0);
  const Status by_source = status_at(workspace, 1, p.num_dst);
  classify(p.by_target.offsets, p.num_dst, num_edges, by_target, stream);
  classify(b.by_source.offsets, p.num_src, num_edges, by_source, stream);
  if (p.num_heads == 0) return host::last_error();
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const bool vec = vector_rows(p.q, p.num_dst, p.num_heads, p.head_dim, kVec) &&
                   vector_rows(p.k, p.num_src, p.num_heads, p.head_dim, kVec) &&
                   vector_rows(p.v, p.num_src, p.num_heads, p.value_dim, kVec) &&
                   vector_rows(b.grad_out, p.num_dst, p.num_heads, p.value_dim, kVec) && aligned16(p.out) &&
                   aligned16(b.grad_q) && aligned16(b.grad_k) && aligned16(b.grad_v);
  Plan plan = make_plan(p.num_heads, p.head_dim, p.value_dim, vec ? kVec : 1);
  const int np = choose_np(plan.passes, kBackwardMaxNP);
  plan.g.head_blocks = static_cast<int>(ceil_div(plan.passes, np));
  const bool ok = with_config<T, kBackwardMaxNP>(plan, np, [&](auto cfg) {
    using C = decltype(cfg);
    if (p.num_dst > 0) {
      host::launch(target_rows_kernel<C>, grid_for(p.num_dst, kRowWarps), kRowWarps * kWarpSize, stream, b,
                   plan.g, num_edges, by_target);
      if (num_edges > kHubDegree)
        host::launch(target_hubs_kernel<C>, hub_grid(target_hubs_kernel<C>, num_edges, p.num_dst),
                     kHubWarps * kWarpSize, stream, b, plan.g, num_edges, by_target);
    }
    // The source pass reads the Delta the target pass wrote (same stream).
    if (p.num_src > 0) {
      host::launch(source_rows_kernel<C>, grid_for(p.num_src, kRowWarps), kRowWarps * kWarpSize, stream, b,
                   plan.g, num_edges, by_source);
      if (num_edges > kHubDegree)
        host::launch(source_hubs_kernel<C>, hub_grid(source_hubs_kernel<C>, num_edges, p.num_src),
                     kHubWarps * kWarpSize, stream, b, plan.g, num_edges, by_source);
    }
  });
  if (!ok) return cudaErrorInvalidValue;
  return host::last_error();
}

}  // namespace
}  // namespace detail
}  // namespace gpu
}  // namespace graphattn
