// Plain structs of pointers, strides and sizes shared by the CPU and CUDA kernels.
// No torch types here, so CUDA sources that include it compile with plain nvcc.
#pragma once
#include <cstdint>

#include "dropout_hash.h"

namespace graphattn {

// Who a row attends to. For "csr" the neighbours of row i are the positions
// [offsets[i], offsets[i+1]) of `index` (the other endpoint) and `edge_id`
// (the edge_index column, for bias). For segments, `offsets` is the segment
// table ptr[0..num_segments] and the neighbours of node i are the nodes of its
// own segment; index/edge_id are null.
struct PatternParams {
  const int64_t* offsets = nullptr;
  const int64_t* index = nullptr;
  const int64_t* edge_id = nullptr;
  int64_t num_segments = 0;  // > 0 only for the segment pattern
};

// Rows are [rows, heads, dim] with the last dim contiguous; any row / head strides.
struct RowsParams {
  const void* data = nullptr;
  int64_t row_stride = 0;
  int64_t head_stride = 0;
};

struct ForwardParams {
  RowsParams q, k, v;
  const void* bias = nullptr;  // [E, H] of the input dtype, indexed by edge id; null if none
  int64_t bias_edge_stride = 0, bias_head_stride = 0;  // head stride 0 = one bias shared by heads
  PatternParams by_target;     // incoming edges of each target row
  int64_t num_dst = 0, num_src = 0, num_heads = 0, head_dim = 0, value_dim = 0;
  double scale = 1.0;
  void* out = nullptr;  // [num_dst, H, Dv] contiguous, input dtype
  void* lse = nullptr;  // [num_dst, H] contiguous, accumulation dtype
  // The sparse-path extras (graphattn/scored_ops.py). The defaults are plain dot-product attention.
  int score_kind = 0;           // kDotScore, kGatScore or kGatv2Score
  const void* att = nullptr;    // [H, D] contiguous, input dtype: gatv2's attention vector; null = all ones
  double negative_slope = 0.2;  // of the additive scores' LeakyReLU
  DropoutParams dropout;        // attention dropout on the weights, mask by edge id (dropout_hash.h)
  void* alpha = nullptr;        // [E, H] contiguous, input dtype, by edge id: the weights after dropout; or null
};

constexpr int kDotScore = 0;    // s = scale <q_i, k_j> + bias
constexpr int kGatScore = 1;    // s = LeakyReLU(q_i + k_j) + bias, with D = 1 (the additive score, att = 1)
constexpr int kGatv2Score = 2;  // s = sum_d att LeakyReLU(q_i + k_j) + bias

struct BackwardParams {
  ForwardParams fwd;            // inputs as in the forward (its out/lse point at the saved ones)
  RowsParams grad_out;          // [num_dst, H, Dv]
  const void* grad_lse = nullptr;  // [num_dst, H] accumulation dtype, or null
  PatternParams by_source;      // outgoing edges of each source row (the transposed CSR)
  void* delta = nullptr;        // scratch [num_dst, H] accumulation dtype: rowsum(dO*O) - grad_lse
  void* grad_q = nullptr;       // contiguous, input dtype
  void* grad_k = nullptr;
  void* grad_v = nullptr;
  void* grad_bias = nullptr;    // [E, H] contiguous, input dtype, or null when not needed
  // Extras: the gradient of the returned weights ([E, H] accumulation dtype by edge id, or null), and
  // per-target-row partials of the gradient of att ([num_dst, H, D] accumulation dtype, or null): each
  // row written by one thread, summed afterwards, so the sum does not depend on the thread count.
  const void* grad_alpha = nullptr;
  void* grad_att_rows = nullptr;
};

}  // namespace graphattn
