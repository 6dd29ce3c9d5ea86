// CPU implementation of graphattn::csr_attention_{forward,backward}.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../tensor_params.h"
#include "attention_rows.h"

namespace graphattn {
namespace cpu {
namespace {

void check_csr(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_rows) {
  TORCH_CHECK(rowptr.numel() == num_rows + 1, "graphattn: rowptr must have ", num_rows + 1, " entries, got ",
              rowptr.numel(), "; the Graph does not match q");
  TORCH_CHECK(rowptr.numel() == 0 || (rowptr[0].item<int64_t>() == 0 && rowptr[-1].item<int64_t>() == col.numel()),
              "graphattn: rowptr must run from 0 to the number of edges");
}

std::tuple<at::Tensor, at::Tensor> csr_attention_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                                         const at::Tensor& v_in, const at::Tensor& rowptr,
                                                         const at::Tensor& col, const at::Tensor& eid,
                                                         const c10::optional<at::Tensor>& bias, double scale) {
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  at::Tensor out = at::empty({q.size(0), q.size(1), v.size(2)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(stats_dtype(q)));
  ForwardParams p = forward_params(q, k, v, bias, scale, out, lse);
  check_csr(rowptr, col, p.num_dst);
  p.by_target = csr_params(rowptr, col, eid, p.num_dst);
  const CsrNeighbours nb{p.by_target.offsets, p.by_target.index, p.by_target.edge_id, p.num_src};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "csr_attention_forward", [&] {
    forward<scalar_t, at::opmath_type<scalar_t>>(p, nb);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> csr_attention_backward(
    const at::Tensor& grad_out_in, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& bias, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& eid,
    const at::Tensor& colptr, const at::Tensor& row_t, const at::Tensor& eid_t, double scale, bool need_dbias) {
  BackwardTensors t = backward_tensors(grad_out_in, grad_lse, q_in, k_in, v_in, bias, out_in, lse_in, scale);
  BackwardParams& b = t.params;
  check_csr(rowptr, col, b.fwd.num_dst);
  check_csr(colptr, row_t, b.fwd.num_src);
  b.fwd.by_target = csr_params(rowptr, col, eid, b.fwd.num_dst);
  b.by_source = csr_params(colptr, row_t, eid_t, b.fwd.num_src);
  const at::TensorOptions options = t.q.options();
  at::Tensor grad_bias = need_dbias ? at::empty({col.numel(), t.q.size(1)}, options) : at::empty({0}, options);
  b.grad_bias = need_dbias ? grad_bias.data_ptr() : nullptr;
  at::Tensor edge_probs = at::empty({col.numel(), t.q.size(1), 2}, options.dtype(t.lse.scalar_type()));
  b.edge_probs = edge_probs.data_ptr();
  const CsrNeighbours by_target{b.fwd.by_target.offsets, b.fwd.by_target.index, b.fwd.by_target.edge_id,
                                b.fwd.num_src};
  const CsrNeighbours by_source{b.by_source.offsets, b.by_source.index, b.by_source.edge_id, b.fwd.num_dst};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.q.scalar_type(), "csr_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_targets<scalar_t, acc_t>(b, by_target);  // also fills delta, which the source pass reads
    backward_sources<scalar_t, acc_t>(b, by_source);
  });
  return {t.grad_q, t.grad_k, t.grad_v, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) {
  m.impl("csr_attention_forward", &csr_attention_forward);
  m.impl("csr_attention_backward", &csr_attention_backward);
}

}  // namespace cpu
}  // namespace graphattn
