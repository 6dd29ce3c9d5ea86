// CPU implementation of graphattn::segment_attention_{forward,backward}:
// complete attention inside each segment of a batch of graphs, by the same row
// kernels as the CSR op with implicit neighbours (no edge list, no padding,
// nothing of size segment^2 allocated), at the instruction-set level of the call (isa.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../tensor_params.h"
#include "isa.h"

namespace graphattn {
namespace cpu {
namespace {

SegmentNeighbours segment_neighbours(const at::Tensor& ptr, int64_t num_nodes) {
  TORCH_CHECK(ptr.dim() == 1 && ptr.numel() >= 1 && ptr.scalar_type() == at::kLong && ptr.is_contiguous(),
              "graphattn: ptr must be a contiguous int64 vector of segment offsets");
  TORCH_CHECK(ptr[0].item<int64_t>() == 0 && ptr[-1].item<int64_t>() == num_nodes,
              "graphattn: ptr must run from 0 to the number of nodes (", num_nodes, ")");
  return SegmentNeighbours{ptr.data_ptr<int64_t>(), ptr.numel() - 1};
}

std::tuple<at::Tensor, at::Tensor> segment_attention_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                                             const at::Tensor& v_in, const at::Tensor& ptr,
                                                             double scale) {
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  TORCH_CHECK(q.size(0) == k.size(0), "graphattn: segments need as many queries as keys");
  at::Tensor out = at::empty({q.size(0), q.size(1), v.size(2)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(stats_dtype(q)));
  const ForwardParams p = forward_params(q, k, v, c10::nullopt, scale, out, lse);
  const SegmentNeighbours nb = segment_neighbours(ptr, q.size(0));
  row_kernels().segment_forward(p, nb, q.scalar_type());
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_attention_backward(
    const at::Tensor& grad_out_in, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
    const at::Tensor& ptr, double scale) {
  BackwardTensors t = backward_tensors(grad_out_in, grad_lse, q_in, k_in, v_in, c10::nullopt, out_in, lse_in, scale);
  const BackwardParams& b = t.params;
  const SegmentNeighbours nb = segment_neighbours(ptr, t.q.size(0));
  row_kernels().segment_backward(b, nb, t.q.scalar_type());  // the target pass, then the source pass
  return {t.grad_q, t.grad_k, t.grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) {
  m.impl("segment_attention_forward", &segment_attention_forward);
  m.impl("segment_attention_backward", &segment_attention_backward);
}

}  // namespace cpu
}  // namespace graphattn
