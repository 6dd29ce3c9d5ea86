// Fill the plain structs of params.h from tensors, with the checks every
// binding (CPU or CUDA) shares. Only bindings include this; kernels do not.
#pragma once

#include <ATen/ATen.h>

#include "params.h"

namespace graphattn {

// Rows must have a contiguous last dim; anything else is made so here.
inline at::Tensor last_dim_contiguous(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

// float64 inputs keep float64 statistics (lse, Delta); every other dtype uses float32.
inline at::ScalarType stats_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline RowsParams rows_params(const at::Tensor& t) {
  // An empty tensor is never read, and torch calls it contiguous whatever its strides, so
  // .contiguous() leaves e.g. a [0, H, 2D][..., ::2] view with last stride 2: accept it.
  TORCH_CHECK(t.dim() == 3 && (t.size(-1) <= 1 || t.stride(-1) == 1 || t.numel() == 0),
              "graphattn: internal: rows tensor not [N, H, D] with unit last stride");
  return RowsParams{t.data_ptr(), t.stride(0), t.stride(1)};
}

inline PatternParams csr_params(const at::Tensor& offsets, const at::Tensor& index, const at::Tensor& edge_id,
                                int64_t num_rows) {
  TORCH_CHECK(offsets.scalar_type() == at::kLong && index.scalar_type() == at::kLong &&
                  edge_id.scalar_type() == at::kLong,
              "graphattn: CSR tensors must be int64");
  TORCH_CHECK(offsets.is_contiguous() && index.is_contiguous() && edge_id.is_contiguous(),
              "graphattn: CSR tensors must be contiguous");
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() == num_rows + 1, "graphattn: CSR offsets must have ", num_rows + 1,
              " entries, got ", offsets.numel(), "; the Graph does not match the q/k sizes");
  TORCH_CHECK(index.numel() == edge_id.numel(), "graphattn: CSR index and edge ids differ in length");
  return PatternParams{offsets.data_ptr<int64_t>(), index.data_ptr<int64_t>(), edge_id.data_ptr<int64_t>(), 0};
}

// q [N_dst, H, D], k [N_src, H, D], v [N_src, H, Dv]; out and lse are written.
inline ForwardParams forward_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const c10::optional<at::Tensor>& bias, double scale, at::Tensor& out,
                                    at::Tensor& lse) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "graphattn: q, k, v must be [N, H, D]");
  TORCH_CHECK(k.size(0) == v.size(0) && q.size(1) == k.size(1) && k.size(1) == v.size(1) && q.size(2) == k.size(2),
              "graphattn: q, k, v shapes do not match");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(),
              "graphattn: q, k, v must share one dtype");
  ForwardParams p;
  p.q = rows_params(q);
  p.k = rows_params(k);
  p.v = rows_params(v);
  p.num_dst = q.size(0);
  p.num_src = k.size(0);
  p.num_heads = q.size(1);
  p.head_dim = q.size(2);
  p.value_dim = v.size(2);
  p.scale = scale;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 2 && bias->size(1) == q.size(1) && bias->scalar_type() == q.scalar_type(),
                "graphattn: bias must be [E, H] of the dtype of q");
    p.bias = bias->data_ptr();
    p.bias_edge_stride = bias->stride(0);
    p.bias_head_stride = bias->stride(1);
  }
  p.out = out.data_ptr();
  p.lse = lse.data_ptr();
  return p;
}

// What every backward binding prepares before its kernels run: inputs with a
// contiguous last dim, saved statistics in the accumulation dtype, the Delta
// scratch and the gradients, and the BackwardParams pointing at them (the
// pattern fields and grad_bias are left to the caller). The tensors are held
// here so the pointers in `params` stay valid.
struct BackwardTensors {
  at::Tensor q, k, v, grad_out, out, lse, grad_lse, delta, grad_q, grad_k, grad_v;
  BackwardParams params;
};

inline BackwardTensors backward_tensors(const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse,
                                        const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const c10::optional<at::Tensor>& bias, const at::Tensor& out,
                                        const at::Tensor& lse, double scale) {
  BackwardTensors t;
  t.q = last_dim_contiguous(q);
  t.k = last_dim_contiguous(k);
  t.v = last_dim_contiguous(v);
  t.grad_out = last_dim_contiguous(grad_out);
  const at::ScalarType acc = stats_dtype(t.q);
  t.out = out.contiguous();
  t.lse = lse.to(acc).contiguous();
  if (grad_lse.has_value()) t.grad_lse = grad_lse->to(acc).contiguous();
  t.delta = at::empty({t.q.size(0), t.q.size(1)}, t.q.options().dtype(acc));
  t.grad_q = at::empty(t.q.sizes(), t.q.options());
  t.grad_k = at::empty(t.k.sizes(), t.k.options());
  t.grad_v = at::empty(t.v.sizes(), t.v.options());
  BackwardParams& b = t.params;
  b.fwd = forward_params(t.q, t.k, t.v, bias, scale, t.out, t.lse);
  b.grad_out = rows_params(t.grad_out);
  b.grad_lse = t.grad_lse.defined() ? t.grad_lse.data_ptr() : nullptr;
  b.delta = t.delta.data_ptr();
  b.grad_q = t.grad_q.data_ptr();
  b.grad_k = t.grad_k.data_ptr();
  b.grad_v = t.grad_v.data_ptr();
  return t;
}

}  // namespace graphattn
