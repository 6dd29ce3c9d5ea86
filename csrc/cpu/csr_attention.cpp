// CPU implementation of graphattn::csr_attention_{forward,backward} (dot-product
// attention over a target-sorted CSR) and of csr_scored_attention_{forward,backward},
// the same op with the sparse-path extras: score kinds, attention dropout and the
// returned weights (graphattn/scored_ops.py). Both run the row kernels of
// attention_rows.h at the instruction-set level of the call (isa.h); the plain op is
// the scored one with its defaults.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../tensor_params.h"
#include "isa.h"

namespace graphattn {
namespace cpu {
namespace {

void check_csr(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_rows) {
  TORCH_CHECK(rowptr.numel() == num_rows + 1, "graphattn: rowptr must have ", num_rows + 1, " entries, got ",
              rowptr.numel(), "; the Graph does not match q");
  TORCH_CHECK(rowptr.numel() == 0 || (rowptr[0].item<int64_t>() == 0 && rowptr[-1].item<int64_t>() == col.numel()),
              "graphattn: rowptr must run from 0 to the number of edges");
}

// The extras of one call, checked and put into the kernel parameters. Returns att
// made contiguous (held by the caller while the kernels run), or an undefined tensor.
at::Tensor set_extras(ForwardParams& p, const at::Tensor& q, const c10::optional<at::Tensor>& att_in,
                      const c10::optional<at::Tensor>& seed, int64_t score_kind, double negative_slope,
                      double dropout_p) {
  TORCH_CHECK(score_kind == kDotScore || score_kind == kGatScore || score_kind == kGatv2Score,
              "graphattn: score kind must be 0 (dot), 1 (gat) or 2 (gatv2), got ", score_kind);
  TORCH_CHECK(score_kind != kGatScore || p.head_dim == 1, "graphattn: gat scores take q, k as [N, H, 1]");
  p.score_kind = static_cast<int>(score_kind);
  p.negative_slope = negative_slope;
  at::Tensor att;
  if (att_in.has_value()) {
    TORCH_CHECK(score_kind == kGatv2Score, "graphattn: att is taken with gatv2 scores only");
    TORCH_CHECK(att_in->dim() == 2 && att_in->size(0) == p.num_heads && att_in->size(1) == p.head_dim &&
                    att_in->scalar_type() == q.scalar_type(),
                "graphattn: att must be [H, D] of the dtype of q");
    att = att_in->contiguous();
    p.att = att.data_ptr();
  }
  TORCH_CHECK(dropout_p >= 0 && dropout_p <= 1, "graphattn: dropout_p must be in [0, 1], got ", dropout_p);
  if (dropout_p > 0) {
    TORCH_CHECK(seed.has_value() && seed->numel() == 2 && seed->scalar_type() == at::kLong && seed->device().is_cpu(),
                "graphattn: dropout needs a CPU int64 seed [2]");
    const at::Tensor words = seed->contiguous();
    p.dropout = dropout_params(dropout_p, words.data_ptr<int64_t>()[0], words.data_ptr<int64_t>()[1]);
  }
  return att;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_scored_attention_forward(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& rowptr,
    const at::Tensor& col, const at::Tensor& eid, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& att_in, const c10::optional<at::Tensor>& seed, int64_t score_kind, double scale,
    double negative_slope, double dropout_p, bool return_alpha) {
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  at::Tensor out = at::empty({q.size(0), q.size(1), v.size(2)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(stats_dtype(q)));
  ForwardParams p = forward_params(q, k, v, bias, scale, out, lse);
  const at::Tensor att = set_extras(p, q, att_in, seed, score_kind, negative_slope, dropout_p);
  at::Tensor alpha = return_alpha ? at::empty({col.numel(), q.size(1)}, q.options()) : at::empty({0}, q.options());
  if (return_alpha) p.alpha = alpha.data_ptr();
  check_csr(rowptr, col, p.num_dst);
  p.by_target = csr_params(rowptr, col, eid, p.num_dst);
  const CsrNeighbours nb{p.by_target.offsets, p.by_target.index, p.by_target.edge_id, p.num_src};
  row_kernels().csr_forward(p, nb, q.scalar_type(), static_cast<int>(score_kind));
  return {out, lse, alpha};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> csr_scored_attention_backward(
    const at::Tensor& grad_out_in, const c10::optional<at::Tensor>& grad_lse,
    const c10::optional<at::Tensor>& grad_alpha_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& att_in,
    const c10::optional<at::Tensor>& seed, const at::Tensor& out_in, const at::Tensor& lse_in,
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& eid, const at::Tensor& colptr,
    const at::Tensor& row_t, const at::Tensor& eid_t, int64_t score_kind, double scale, double negative_slope,
    double dropout_p, bool need_dbias, bool need_datt) {
  BackwardTensors t = backward_tensors(grad_out_in, grad_lse, q_in, k_in, v_in, bias, out_in, lse_in, scale);
  BackwardParams& b = t.params;
  const at::Tensor att = set_extras(b.fwd, t.q, att_in, seed, score_kind, negative_slope, dropout_p);
  check_csr(rowptr, col, b.fwd.num_dst);
  check_csr(colptr, row_t, b.fwd.num_src);
  b.fwd.by_target = csr_params(rowptr, col, eid, b.fwd.num_dst);
  b.by_source = csr_params(colptr, row_t, eid_t, b.fwd.num_src);
  const at::TensorOptions options = t.q.options(), acc_options = options.dtype(t.lse.scalar_type());
  const int64_t E = col.numel(), H = t.q.size(1);
  at::Tensor grad_bias = need_dbias ? at::empty({E, H}, options) : at::empty({0}, options);
  b.grad_bias = need_dbias ? grad_bias.data_ptr() : nullptr;
  at::Tensor grad_alpha;
  if (grad_alpha_in.has_value()) {
    TORCH_CHECK(grad_alpha_in->dim() == 2 && grad_alpha_in->size(0) == E && grad_alpha_in->size(1) == H,
                "graphattn: grad_alpha must be [E, H]");
    grad_alpha = grad_alpha_in->to(t.lse.scalar_type()).contiguous();
    b.grad_alpha = grad_alpha.data_ptr();
  }
  need_datt = need_datt && att.defined();
  at::Tensor grad_att_rows = need_datt ? at::empty({t.q.size(0), H, t.q.size(2)}, acc_options) : at::Tensor();
  b.grad_att_rows = need_datt ? grad_att_rows.data_ptr() : nullptr;
  const CsrNeighbours by_target{b.fwd.by_target.offsets, b.fwd.by_target.index, b.fwd.by_target.edge_id,
                                b.fwd.num_src};
  const CsrNeighbours by_source{b.by_source.offsets, b.by_source.index, b.by_source.edge_id, b.fwd.num_dst};
  // The target pass also fills delta, which the source pass reads.
  row_kernels().csr_backward(b, by_target, by_source, t.q.scalar_type(), static_cast<int>(score_kind));
  at::Tensor grad_att = need_datt ? grad_att_rows.sum(0).to(t.q.scalar_type()) : at::empty({0}, options);
  return {t.grad_q, t.grad_k, t.grad_v, grad_bias, grad_att};
}

// The plain op: dot scores, no dropout, no weights returned.
std::tuple<at::Tensor, at::Tensor> csr_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const at::Tensor& rowptr,
                                                         const at::Tensor& col, const at::Tensor& eid,
                                                         const c10::optional<at::Tensor>& bias, double scale) {
  auto [out, lse, alpha] = csr_scored_attention_forward(q, k, v, rowptr, col, eid, bias, c10::nullopt, c10::nullopt,
                                                        kDotScore, scale, 0.0, 0.0, false);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> csr_attention_backward(
    const at::Tensor& grad_out, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const c10::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& eid, const at::Tensor& colptr,
    const at::Tensor& row_t, const at::Tensor& eid_t, double scale, bool need_dbias) {
  auto [grad_q, grad_k, grad_v, grad_bias, grad_att] = csr_scored_attention_backward(
      grad_out, grad_lse, c10::nullopt, q, k, v, bias, c10::nullopt, c10::nullopt, out, lse, rowptr, col, eid,
      colptr, row_t, eid_t, kDotScore, scale, 0.0, 0.0, need_dbias, false);
  return {grad_q, grad_k, grad_v, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(graphattn, CPU, m) {
  m.impl("csr_attention_forward", &csr_attention_forward);
  m.impl("csr_attention_backward", &csr_attention_backward);
  m.impl("csr_scored_attention_forward", &csr_scored_attention_forward);
  m.impl("csr_scored_attention_backward", &csr_scored_attention_backward);
}

}  // namespace cpu
}  // namespace graphattn
