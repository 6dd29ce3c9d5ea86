// Fused edge-softmax attention on the CPU, one target (or source) row at a time.
//
// The same templates serve the explicit CSR pattern and the segment pattern
// (a batch of complete graphs): a Neighbours type says which rows a row meets.
// Each output row is written by exactly one thread, in a fixed edge order, so
// results are bitwise reproducible run to run whatever the thread count (at one
// instruction-set level; levels differ by rounding only).
//
// This file is compiled once per instruction-set level (isa.h): a kernels_<level>.cpp
// defines, then includes it:
//   GRAPHATTN_CPU_ISA_NS   the level's namespace (baseline, avx2)
//   GRAPHATTN_CPU_TARGET   the function attribute of the level's code (empty for baseline)
//   GRAPHATTN_CPU_AVX2     1 where the AVX2 vector paths below are compiled
// Every function here that does per-row or per-edge work carries GRAPHATTN_CPU_TARGET;
// those that call at::parallel_for do not (a lambda does not inherit the target, so
// the lambdas only call the per-row functions). No include guard on purpose: one
// inclusion per level, and only in that level's file.
#ifndef GRAPHATTN_CPU_ISA_NS
#error "attention_rows.h is included by csrc/cpu/kernels_<level>.cpp only (see isa.h)"
#endif

#include "isa.h"
#include "rows_common.h"

namespace graphattn {
namespace cpu {
namespace GRAPHATTN_CPU_ISA_NS {

template <typename scalar_t>
GRAPHATTN_CPU_TARGET inline const scalar_t* row_ptr(const RowsParams& r, int64_t row, int64_t head) {
  return static_cast<const scalar_t*>(r.data) + row * r.row_stride + head * r.head_stride;
}

// The kernels are bound by the latency of gathering neighbour rows scattered
// through memory, not by arithmetic: ask for a row a few edges before it is used, and
// run on across row ends (rows_common.h, lookahead_end). The distance was chosen by
// timing benchmarks/cpu_vs_pyg.py on the 2-core CI machine with 2, 3, 4, 8 and 16 edges
// ahead: 2 and 3 were fastest, and farther (too many lines in flight) slower;
// prefetching only each row's first line was slower.
constexpr int64_t kPrefetchAhead = 2;

template <typename scalar_t>
GRAPHATTN_CPU_TARGET inline void prefetch_row(const RowsParams& r, int64_t row, int64_t heads, int64_t dim) {
  for (int64_t h = 0; h < heads; ++h) {
    const char* base = reinterpret_cast<const char*>(row_ptr<scalar_t>(r, row, h));
    for (int64_t byte = 0; byte < dim * static_cast<int64_t>(sizeof(scalar_t)); byte += 64)
      __builtin_prefetch(base + byte);
  }
}

// One element to the accumulation type and back. c10's float16 conversions are
// bit manipulation in software unless the whole build has -mf16c; the AVX2 level
// has the F16C instructions (bfloat16 is a shift either way).
template <typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline acc_t to_acc(scalar_t x) {
#if GRAPHATTN_CPU_AVX2
  if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>) return _cvtsh_ss(x.x);
#endif
  return static_cast<acc_t>(x);
}

template <typename scalar_t, typename acc_t>
GRAPHATTN_CPU_TARGET inline scalar_t from_acc(acc_t x) {
#if GRAPHATTN_CPU_AVX2
  // Round to nearest even, as c10's software conversion.
  if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>)
    return c10::Half(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT), c10::Half::from_bits());
#endif
  return static_cast<scalar_t>(x);
}

#if GRAPHATTN_CPU_AVX2
// Vectors of 8 float32 lanes: float32, float16 (F16C) and bfloat16 (widen, shift) rows
// load into them and store from them; everything is accumulated in float32 with FMA.
template <typename acc_t, typename scalar_t>
constexpr bool kVec8 = std::is_same_v<acc_t, float> &&
                       (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::Half> ||
                        std::is_same_v<scalar_t, c10::BFloat16>);

GRAPHATTN_CPU_TARGET inline __m256 load8(const float* x) { return _mm256_loadu_ps(x); }
GRAPHATTN_CPU_TARGET inline __m256 load8(const c10::Half* x) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
}
GRAPHATTN_CPU_TARGET inline __m256 load8(const c10::BFloat16* x) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

GRAPHATTN_CPU_TARGET inline void store8(float* y, __m256 v) { _mm256_storeu_ps(y, v); }
GRAPHATTN_CPU_TARGET inline void store8(c10::Half* y, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(y), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
GRAPHATTN_CPU_TARGET inline void store8(c10::BFloat16* y, __m256 v) {
  // c10's round_to_nearest_even, 8 lanes at once: NaN -> 0x7FC0, else (u + 0x7FFF + ((u >> 16) & 1)) >> 16.
  const __m256i u = _mm256_castps_si256(v);
  const __m256i bias =
      _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)), _mm256_set1_epi32(0x7FFF));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  // Every lane is < 2^16, so the unsigned saturating pack is exact.
  _mm_storeu_si128(reinterpret_cast<__m128i*>(y),
                   _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

GRAPHATTN_CPU_TARGET inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// LeakyReLU(x) without a branch: x where x > 0, else slope * x.
GRAPHATTN_CPU_TARGET inline __m256 leaky8(__m256 x, __m256 slope) {
  return _mm256_blendv_ps(_mm256_mul_ps(slope, x), x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
}
#endif

template <typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline acc_t dot(const acc_t* a, const scalar_t* b, int64_t n) {
#if GRAPHATTN_CPU_AVX2
  if constexpr (kVec8<acc_t, scalar_t>) {
    // Two accumulators: D = 32 is four vectors, and one chain of FMAs would wait on itself.
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= n; d += 16) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), load8(b + d), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), load8(b + d + 8), s1);
    }
    if (d + 8 <= n) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), load8(b + d), s0);
      d += 8;
    }
    acc_t s = hsum8(_mm256_add_ps(s0, s1));
    for (; d < n; ++d) s += a[d] * to_acc<acc_t>(b[d]);
    return s;
  }
#endif
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < n; ++d) s += a[d] * static_cast<acc_t>(b[d]);
  return s;
}

template <typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline void axpy(acc_t* y, acc_t w, const scalar_t* x, int64_t n) {
#if GRAPHATTN_CPU_AVX2
  if constexpr (kVec8<acc_t, scalar_t>) {
    const __m256 wv = _mm256_set1_ps(w);
    int64_t d = 0;
    for (; d + 8 <= n; d += 8) _mm256_storeu_ps(y + d, _mm256_fmadd_ps(wv, load8(x + d), _mm256_loadu_ps(y + d)));
    for (; d < n; ++d) y[d] += w * to_acc<acc_t>(x[d]);
    return;
  }
#endif
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) y[d] += w * static_cast<acc_t>(x[d]);
}

// Row `row` of a [rows, H, dim] tensor converted to the accumulation type.
template <typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline void load_row(acc_t* dst, const RowsParams& r, int64_t row, int64_t heads, int64_t dim) {
  for (int64_t h = 0; h < heads; ++h) {
    const scalar_t* src = row_ptr<scalar_t>(r, row, h);
    int64_t d = 0;
#if GRAPHATTN_CPU_AVX2
    if constexpr (kVec8<acc_t, scalar_t>)
      for (; d + 8 <= dim; d += 8) _mm256_storeu_ps(dst + h * dim + d, load8(src + d));
#endif
    for (; d < dim; ++d) dst[h * dim + d] = to_acc<acc_t>(src[d]);
  }
}

// dst[d] = factor * src[d] in the output dtype (one output row).
template <typename scalar_t, typename acc_t>
GRAPHATTN_CPU_TARGET inline void store_row(scalar_t* dst, const acc_t* src, acc_t factor, int64_t n) {
  int64_t d = 0;
#if GRAPHATTN_CPU_AVX2
  if constexpr (kVec8<acc_t, scalar_t>) {
    const __m256 f = _mm256_set1_ps(factor);
    for (; d + 8 <= n; d += 8) store8(dst + d, _mm256_mul_ps(f, _mm256_loadu_ps(src + d)));
  }
#endif
  for (; d < n; ++d) dst[d] = from_acc<scalar_t>(factor * src[d]);
}

template <typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline acc_t bias_at(const ForwardParams& p, int64_t edge, int64_t h) {
  if (p.bias == nullptr) return 0;
  return to_acc<acc_t>(static_cast<const scalar_t*>(p.bias)[edge * p.bias_edge_stride + h * p.bias_head_stride]);
}

// The score kinds (params.h). The kernels are templated on kScore so the plain
// dot-product path compiles to the same code as before the extras existed. Any
// kScore other than kDotScore is the additive form; gat is gatv2 with D = 1 and
// no att (all ones), so bindings instantiate kDotScore and kGatv2Score only.

// The additive score sum_d att[d] LeakyReLU(q[d] + k[d]) of one head, and its gradients: loops
// written without branches so that `omp simd` vectorises them like dot() and axpy().
template <typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline acc_t additive_score(const acc_t* q, const scalar_t* k, const acc_t* att, int64_t n,
                                                 acc_t slope) {
#if GRAPHATTN_CPU_AVX2
  if constexpr (kVec8<acc_t, scalar_t>) {
    const __m256 sl = _mm256_set1_ps(slope);
    __m256 sv = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= n; d += 8) {
      const __m256 x = _mm256_add_ps(_mm256_loadu_ps(q + d), load8(k + d));
      sv = _mm256_fmadd_ps(_mm256_loadu_ps(att + d), leaky8(x, sl), sv);
    }
    acc_t s = hsum8(sv);
    for (; d < n; ++d) {
      const acc_t x = q[d] + to_acc<acc_t>(k[d]);
      s += att[d] * (x > 0 ? x : slope * x);
    }
    return s;
  }
#endif
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < n; ++d) {
    const acc_t x = q[d] + to_acc<acc_t>(k[d]);
    s += att[d] * (x > 0 ? x : slope * x);
  }
  return s;
}

// dq += ds att LeakyReLU'(q + k), and datt += ds LeakyReLU(q + k) when datt is not null.
template <typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline void additive_grad_q(acc_t* dq, acc_t* datt, acc_t ds, const acc_t* q, const scalar_t* k,
                                                 const acc_t* att, int64_t n, acc_t slope) {
  const acc_t ds_slope = ds * slope;
  int64_t d0 = 0;
#if GRAPHATTN_CPU_AVX2
  if constexpr (kVec8<acc_t, scalar_t>) {
    const __m256 vds = _mm256_set1_ps(ds), vds_slope = _mm256_set1_ps(ds_slope), zero = _mm256_setzero_ps();
    for (; d0 + 8 <= n; d0 += 8) {
      const __m256 x = _mm256_add_ps(_mm256_loadu_ps(q + d0), load8(k + d0));
      const __m256 g = _mm256_blendv_ps(vds_slope, vds, _mm256_cmp_ps(x, zero, _CMP_GT_OQ));
      _mm256_storeu_ps(dq + d0, _mm256_fmadd_ps(_mm256_loadu_ps(att + d0), g, _mm256_loadu_ps(dq + d0)));
      if (datt != nullptr) _mm256_storeu_ps(datt + d0, _mm256_fmadd_ps(g, x, _mm256_loadu_ps(datt + d0)));
    }
  }
#endif
  if (datt == nullptr) {
#pragma omp simd
    for (int64_t d = d0; d < n; ++d) {
      const acc_t x = q[d] + to_acc<acc_t>(k[d]);
      dq[d] += att[d] * (x > 0 ? ds : ds_slope);
    }
  } else {
#pragma omp simd
    for (int64_t d = d0; d < n; ++d) {
      const acc_t x = q[d] + to_acc<acc_t>(k[d]);
      const acc_t g = x > 0 ? ds : ds_slope;
      dq[d] += att[d] * g;
      datt[d] += g * x;  // ds LeakyReLU(x) = LeakyReLU'(x) ds x
    }
  }
}

// dk += ds att LeakyReLU'(q + k), with q of the input dtype and k already converted.
template <typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline void additive_grad_k(acc_t* dk, acc_t ds, const scalar_t* q, const acc_t* k,
                                                 const acc_t* att, int64_t n, acc_t slope) {
  const acc_t ds_slope = ds * slope;
  int64_t d0 = 0;
#if GRAPHATTN_CPU_AVX2
  if constexpr (kVec8<acc_t, scalar_t>) {
    const __m256 vds = _mm256_set1_ps(ds), vds_slope = _mm256_set1_ps(ds_slope), zero = _mm256_setzero_ps();
    for (; d0 + 8 <= n; d0 += 8) {
      const __m256 x = _mm256_add_ps(load8(q + d0), _mm256_loadu_ps(k + d0));
      const __m256 g = _mm256_blendv_ps(vds_slope, vds, _mm256_cmp_ps(x, zero, _CMP_GT_OQ));
      _mm256_storeu_ps(dk + d0, _mm256_fmadd_ps(_mm256_loadu_ps(att + d0), g, _mm256_loadu_ps(dk + d0)));
    }
  }
#endif
#pragma omp simd
  for (int64_t d = d0; d < n; ++d) {
    const acc_t x = to_acc<acc_t>(q[d]) + k[d];
    dk[d] += att[d] * (x > 0 ? ds : ds_slope);
  }
}

// The score without bias: q_row_h is head h of the target row (accumulation type),
// k_jh head h of the source row, att_h head h of att (additive scores only). Both kinds are
// symmetric in q and k, bitwise: the source pass of the backward passes k's row first.
template <int kScore, typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline acc_t raw_score(const ForwardParams& p, const acc_t* q_row_h, const scalar_t* k_jh,
                                            const acc_t* att_h) {
  if constexpr (kScore == kDotScore)
    return static_cast<acc_t>(p.scale) * dot(q_row_h, k_jh, p.head_dim);
  else
    return additive_score(q_row_h, k_jh, att_h, p.head_dim, static_cast<acc_t>(p.negative_slope));
}

template <int kScore, typename acc_t, typename scalar_t>
GRAPHATTN_CPU_TARGET inline acc_t score(const ForwardParams& p, const acc_t* q_row, const acc_t* att, int64_t src,
                                        int64_t edge, int64_t h) {
  return raw_score<kScore, acc_t, scalar_t>(p, q_row + h * p.head_dim, row_ptr<scalar_t>(p.k, src, h),
                                            att + h * p.head_dim) +
         bias_at<acc_t, scalar_t>(p, edge, h);
}

// att [H, D] in the accumulation type; all ones when there is none (gat), unused for dot.
template <int kScore, typename acc_t, typename scalar_t>
inline std::vector<acc_t> load_att(const ForwardParams& p) {
  std::vector<acc_t> att;
  if constexpr (kScore != kDotScore) {
    att.assign(p.num_heads * p.head_dim, acc_t(1));
    if (p.att != nullptr)
      for (int64_t x = 0; x < p.num_heads * p.head_dim; ++x) att[x] = static_cast<acc_t>(static_cast<const scalar_t*>(p.att)[x]);
  }
  return att;
}

// The factor the weight of (edge, h) is multiplied by after the softmax: 1 without
// dropout; else 1 / (1 - p) when kept and 0 when dropped.
template <typename acc_t>
GRAPHATTN_CPU_TARGET inline acc_t dropout_factor(const DropoutParams& d, int64_t edge, int64_t h) {
  if (!d.enabled) return acc_t(1);
  return dropout_keep(d, edge, h) ? static_cast<acc_t>(d.keep_scale) : acc_t(0);
}

// The weight exp(s - lse) of a score in a row whose log-sum-exp is lse. A row with no
// edge, or whose every edge is masked (score -inf), has lse = -inf: its weights are 0,
// where exp(-inf - -inf) would be NaN (FlashAttention's convention for masked rows).
template <typename acc_t>
GRAPHATTN_CPU_TARGET inline acc_t weight_from_lse(acc_t s, acc_t lse) {
  return lse == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : std::exp(s - lse);
}

// Scores are computed for a chunk of edges, then folded into a running
// (max, sum, acc) per head: exp() runs once per edge and head, and the
// accumulator is rescaled once per chunk, not once per edge.
constexpr int64_t kChunk = 64;

// Target rows [begin, end) of the forward.
template <typename scalar_t, typename acc_t, typename Neighbours, int kScore>
GRAPHATTN_CPU_TARGET void forward_rows(const ForwardParams& p, const Neighbours& nb, const acc_t* att, int64_t begin,
                                       int64_t end) {
  const int64_t H = p.num_heads, D = p.head_dim, Dv = p.value_dim;
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  std::vector<acc_t> q_row(H * D), acc(H * Dv), row_max(H), shift(H), row_sum(H), scores(kChunk * H);
  std::vector<int64_t> srcs(kChunk);
  for (int64_t i = begin; i < end; ++i) {
    load_row<acc_t, scalar_t>(q_row.data(), p.q, i, H, D);
    std::fill(acc.begin(), acc.end(), acc_t(0));
    std::fill(row_max.begin(), row_max.end(), neg_inf);
    std::fill(row_sum.begin(), row_sum.end(), acc_t(0));
    const auto [first, last] = nb.range(i);
    const int64_t ahead_end = nb.lookahead_end(last, end);
    for (int64_t c = first; c < last; c += kChunk) {
      const int64_t n = std::min(kChunk, last - c);
      for (int64_t t = 0; t < n; ++t) srcs[t] = nb.node(c + t);
      for (int64_t t = 0; t < n; ++t) {
        if (c + t + kPrefetchAhead < ahead_end) {
          const int64_t j = nb.peek(c + t + kPrefetchAhead);
          if (j >= 0) {
            prefetch_row<scalar_t>(p.k, j, H, D);
            prefetch_row<scalar_t>(p.v, j, H, Dv);  // read in the loop after this one
          }
        }
        for (int64_t h = 0; h < H; ++h)
          scores[t * H + h] = score<kScore, acc_t, scalar_t>(p, q_row.data(), att, srcs[t], nb.edge(c + t), h);
      }
      for (int64_t h = 0; h < H; ++h) {
        acc_t chunk_max = neg_inf;
        for (int64_t t = 0; t < n; ++t) chunk_max = std::max(chunk_max, scores[t * H + h]);
        if (chunk_max > row_max[h]) {
          const acc_t rescale = std::exp(row_max[h] - chunk_max);  // 0 when row_max was -inf
          row_sum[h] *= rescale;
          for (int64_t d = 0; d < Dv; ++d) acc[h * Dv + d] *= rescale;
          row_max[h] = chunk_max;
        }
      }
      // While every score so far is -inf (masked), the max is -inf: subtracting 0 instead
      // gives the masked edges weight exp(-inf) = 0 rather than NaN.
      for (int64_t h = 0; h < H; ++h) shift[h] = row_max[h] == neg_inf ? acc_t(0) : row_max[h];
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t h = 0; h < H; ++h) {
          const acc_t w = std::exp(scores[t * H + h] - shift[h]);
          row_sum[h] += w;  // the softmax's denominator counts dropped edges too
          const acc_t kept = p.dropout.enabled && !dropout_keep(p.dropout, nb.edge(c + t), h) ? acc_t(0) : w;
          axpy(acc.data() + h * Dv, kept, row_ptr<scalar_t>(p.v, srcs[t], h), Dv);
        }
      }
    }
    scalar_t* out = static_cast<scalar_t*>(p.out) + i * H * Dv;
    acc_t* lse = static_cast<acc_t*>(p.lse) + i * H;
    const acc_t keep_scale = p.dropout.enabled ? static_cast<acc_t>(p.dropout.keep_scale) : acc_t(1);
    for (int64_t h = 0; h < H; ++h) {
      // A row without edges, or with every edge masked: out = 0 and lse = -inf (row_sum is 0).
      const acc_t inv = row_sum[h] > 0 ? keep_scale / row_sum[h] : acc_t(0);
      store_row(out + h * Dv, acc.data() + h * Dv, inv, Dv);
      // == 0, not > 0: a NaN sum (a NaN score in the row) must give a NaN lse, not -inf, so that the
      // backward does not take the row for one without edges and drop the NaN (API: NaN reaches its rows).
      lse[h] = row_sum[h] == 0 ? neg_inf : row_max[h] + std::log(row_sum[h]);
    }
    if (p.alpha != nullptr) {
      // The weights, now that lse is known: from the scores still in the buffer when the
      // row fitted one chunk, else recomputed.
      const bool in_buffer = last - first <= kChunk;
      for (int64_t e = first; e < last; ++e) {
        const int64_t edge = nb.edge(e);
        for (int64_t h = 0; h < H; ++h) {
          const acc_t s = in_buffer ? scores[(e - first) * H + h]
                                    : score<kScore, acc_t, scalar_t>(p, q_row.data(), att, nb.node(e), edge, h);
          static_cast<scalar_t*>(p.alpha)[edge * H + h] =
              from_acc<scalar_t>(weight_from_lse(s, lse[h]) * dropout_factor<acc_t>(p.dropout, edge, h));
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t, typename Neighbours, int kScore = kDotScore>
void forward(const ForwardParams& p, const Neighbours& nb) {
  const std::vector<acc_t> att = load_att<kScore, acc_t, scalar_t>(p);
  at::parallel_for(0, p.num_dst, 16, [&](int64_t begin, int64_t end) {
    forward_rows<scalar_t, acc_t, Neighbours, kScore>(p, nb, att.data(), begin, end);
  });
}

// Backward, pass 1, over target rows: Delta_i = rowsum(dO_i * O_i) - dlse_i,
// then for each incoming edge ds = p (f (dp + g) - Delta_i) with p = exp(s - lse_i),
// dp = <dO_i, v_j>, f the dropout factor and g the gradient of the returned weight
// (see graphattn/scored_ops.py); dQ_i = sum ds ds/dq_i (scale k_j for dot
// scores); dbias[edge] = ds; the additive scores also give d att.
template <typename scalar_t, typename acc_t, typename Neighbours, int kScore>
GRAPHATTN_CPU_TARGET void backward_target_rows(const BackwardParams& b, const Neighbours& nb, const acc_t* att,
                                               int64_t begin, int64_t end) {
  const ForwardParams& p = b.fwd;
  const int64_t H = p.num_heads, D = p.head_dim, Dv = p.value_dim;
  const acc_t slope = static_cast<acc_t>(p.negative_slope);
  const acc_t* grad_alpha = static_cast<const acc_t*>(b.grad_alpha);
  std::vector<acc_t> q_row(H * D), go_row(H * Dv), dq(H * D), datt(b.grad_att_rows != nullptr ? H * D : 0);
  for (int64_t i = begin; i < end; ++i) {
    load_row<acc_t, scalar_t>(q_row.data(), p.q, i, H, D);
    load_row<acc_t, scalar_t>(go_row.data(), b.grad_out, i, H, Dv);
    const acc_t* lse = static_cast<const acc_t*>(p.lse) + i * H;
    acc_t* delta = static_cast<acc_t*>(b.delta) + i * H;
    const scalar_t* out = static_cast<const scalar_t*>(p.out) + i * H * Dv;
    for (int64_t h = 0; h < H; ++h) {
      delta[h] = dot(go_row.data() + h * Dv, out + h * Dv, Dv);
      if (b.grad_lse != nullptr) delta[h] -= static_cast<const acc_t*>(b.grad_lse)[i * H + h];
    }
    std::fill(dq.begin(), dq.end(), acc_t(0));
    std::fill(datt.begin(), datt.end(), acc_t(0));
    const auto [first, last] = nb.range(i);
    const int64_t ahead_end = nb.lookahead_end(last, end);
    for (int64_t e = first; e < last; ++e) {
      const int64_t j = nb.node(e), edge = nb.edge(e);
      if (e + kPrefetchAhead < ahead_end) {
        const int64_t ahead = nb.peek(e + kPrefetchAhead);
        if (ahead >= 0) {
          prefetch_row<scalar_t>(p.k, ahead, H, D);
          prefetch_row<scalar_t>(p.v, ahead, H, Dv);
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        const scalar_t* k_jh = row_ptr<scalar_t>(p.k, j, h);
        const acc_t prob = weight_from_lse(score<kScore, acc_t, scalar_t>(p, q_row.data(), att, j, edge, h), lse[h]);
        acc_t dp = dot(go_row.data() + h * Dv, row_ptr<scalar_t>(p.v, j, h), Dv);
        if (grad_alpha != nullptr) dp += grad_alpha[edge * H + h];
        const acc_t factor = dropout_factor<acc_t>(p.dropout, edge, h);
        const acc_t ds = prob * (factor * dp - delta[h]);
        if constexpr (kScore == kDotScore) {
          axpy(dq.data() + h * D, ds, k_jh, D);
        } else {
          additive_grad_q(dq.data() + h * D, datt.empty() ? nullptr : datt.data() + h * D, ds, q_row.data() + h * D,
                          k_jh, att + h * D, D, slope);
        }
        if (b.grad_bias != nullptr) static_cast<scalar_t*>(b.grad_bias)[edge * H + h] = from_acc<scalar_t>(ds);
      }
    }
    // The dot score's scale is applied once per row rather than once per edge.
    const acc_t q_factor = kScore == kDotScore ? static_cast<acc_t>(p.scale) : acc_t(1);
    store_row(static_cast<scalar_t*>(b.grad_q) + i * H * D, dq.data(), q_factor, H * D);
    if (!datt.empty()) std::copy(datt.begin(), datt.end(), static_cast<acc_t*>(b.grad_att_rows) + i * H * D);
  }
}

template <typename scalar_t, typename acc_t, typename Neighbours, int kScore = kDotScore>
void backward_targets(const BackwardParams& b, const Neighbours& nb) {
  const std::vector<acc_t> att = load_att<kScore, acc_t, scalar_t>(b.fwd);
  at::parallel_for(0, b.fwd.num_dst, 16, [&](int64_t begin, int64_t end) {
    backward_target_rows<scalar_t, acc_t, Neighbours, kScore>(b, nb, att.data(), begin, end);
  });
}

// Backward, pass 2, over source rows (the transposed CSR, or the same segment):
// dV_j = sum f p dO_i and dK_j = sum ds * d(score)/dk_j over the edges leaving j. Each edge's (p, ds) is
// recomputed here, bitwise as pass 1 computed it (the score and <v_j, dO_i> are symmetric in their
// operands and summed in the same order), from the target's lse and Delta: [N_dst, H] arrays that
// stay in cache. Storing them per edge in pass 1 instead cost two scattered accesses per edge (a
// write and a read by edge id, ~2*4*H bytes each) and E*H*8 bytes of memory.
template <typename scalar_t, typename acc_t, typename Neighbours, int kScore>
GRAPHATTN_CPU_TARGET void backward_source_rows(const BackwardParams& b, const Neighbours& nb, const acc_t* att,
                                               int64_t begin, int64_t end) {
  const ForwardParams& p = b.fwd;
  const int64_t H = p.num_heads, D = p.head_dim, Dv = p.value_dim;
  const acc_t slope = static_cast<acc_t>(p.negative_slope);
  const acc_t* grad_alpha = static_cast<const acc_t*>(b.grad_alpha);
  std::vector<acc_t> k_row(H * D), v_row(H * Dv), dk(H * D), dv(H * Dv);
  for (int64_t j = begin; j < end; ++j) {
    load_row<acc_t, scalar_t>(k_row.data(), p.k, j, H, D);
    load_row<acc_t, scalar_t>(v_row.data(), p.v, j, H, Dv);
    std::fill(dk.begin(), dk.end(), acc_t(0));
    std::fill(dv.begin(), dv.end(), acc_t(0));
    const auto [first, last] = nb.range(j);
    const int64_t ahead_end = nb.lookahead_end(last, end);
    for (int64_t e = first; e < last; ++e) {
      const int64_t i = nb.node(e), edge = nb.edge(e);
      if (e + kPrefetchAhead < ahead_end) {
        const int64_t ahead = nb.peek(e + kPrefetchAhead);
        if (ahead >= 0) {
          prefetch_row<scalar_t>(p.q, ahead, H, D);
          prefetch_row<scalar_t>(b.grad_out, ahead, H, Dv);
        }
      }
      const acc_t* lse = static_cast<const acc_t*>(p.lse) + i * H;
      const acc_t* delta = static_cast<const acc_t*>(b.delta) + i * H;
      for (int64_t h = 0; h < H; ++h) {
        const scalar_t* q_i = row_ptr<scalar_t>(p.q, i, h);
        const scalar_t* go_i = row_ptr<scalar_t>(b.grad_out, i, h);
        const acc_t s = raw_score<kScore, acc_t, scalar_t>(p, k_row.data() + h * D, q_i, att + h * D) +
                        bias_at<acc_t, scalar_t>(p, edge, h);
        const acc_t prob = weight_from_lse(s, lse[h]);
        acc_t dp = dot(v_row.data() + h * Dv, go_i, Dv);
        if (grad_alpha != nullptr) dp += grad_alpha[edge * H + h];
        const acc_t factor = dropout_factor<acc_t>(p.dropout, edge, h);
        const acc_t ds = prob * (factor * dp - delta[h]);
        axpy(dv.data() + h * Dv, prob * factor, go_i, Dv);  // the weight after dropout
        if constexpr (kScore == kDotScore) {
          axpy(dk.data() + h * D, ds, q_i, D);
        } else {
          additive_grad_k(dk.data() + h * D, ds, q_i, k_row.data() + h * D, att + h * D, D, slope);
        }
      }
    }
    const acc_t k_factor = kScore == kDotScore ? static_cast<acc_t>(p.scale) : acc_t(1);
    store_row(static_cast<scalar_t*>(b.grad_k) + j * H * D, dk.data(), k_factor, H * D);
    store_row(static_cast<scalar_t*>(b.grad_v) + j * H * Dv, dv.data(), acc_t(1), H * Dv);
  }
}

template <typename scalar_t, typename acc_t, typename Neighbours, int kScore = kDotScore>
void backward_sources(const BackwardParams& b, const Neighbours& nb) {
  const std::vector<acc_t> att = load_att<kScore, acc_t, scalar_t>(b.fwd);
  at::parallel_for(0, b.fwd.num_src, 16, [&](int64_t begin, int64_t end) {
    backward_source_rows<scalar_t, acc_t, Neighbours, kScore>(b, nb, att.data(), begin, end);
  });
}

// The level's entry points (isa.h's RowKernels): the dtype dispatch happens here, so
// every instantiation of the kernels above belongs to this level.
namespace {

void csr_forward(const ForwardParams& p, const CsrNeighbours& nb, at::ScalarType dtype, int score_kind) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "csr_attention_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (score_kind == kDotScore)
      forward<scalar_t, acc_t, CsrNeighbours, kDotScore>(p, nb);
    else
      forward<scalar_t, acc_t, CsrNeighbours, kGatv2Score>(p, nb);  // gat: gatv2 with D = 1, att = 1
  });
}

void csr_backward(const BackwardParams& b, const CsrNeighbours& by_target, const CsrNeighbours& by_source,
                  at::ScalarType dtype, int score_kind) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "csr_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // The target pass also fills delta, which the source pass reads.
    if (score_kind == kDotScore) {
      backward_targets<scalar_t, acc_t, CsrNeighbours, kDotScore>(b, by_target);
      backward_sources<scalar_t, acc_t, CsrNeighbours, kDotScore>(b, by_source);
    } else {
      backward_targets<scalar_t, acc_t, CsrNeighbours, kGatv2Score>(b, by_target);
      backward_sources<scalar_t, acc_t, CsrNeighbours, kGatv2Score>(b, by_source);
    }
  });
}

void segment_forward(const ForwardParams& p, const SegmentNeighbours& nb, at::ScalarType dtype) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "segment_attention_forward", [&] {
    forward<scalar_t, at::opmath_type<scalar_t>>(p, nb);
  });
}

void segment_backward(const BackwardParams& b, const SegmentNeighbours& nb, at::ScalarType dtype) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "segment_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_targets<scalar_t, acc_t>(b, nb);  // fills delta, which the source pass reads
    backward_sources<scalar_t, acc_t>(b, nb);  // a segment is its own transpose
  });
}

}  // namespace

const RowKernels kRowKernels{GRAPHATTN_CPU_ISA_NAME, &csr_forward, &csr_backward, &segment_forward,
                             &segment_backward};

}  // namespace GRAPHATTN_CPU_ISA_NS
}  // namespace cpu
}  // namespace graphattn
