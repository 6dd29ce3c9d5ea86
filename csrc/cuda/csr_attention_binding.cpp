// CUDA implementation of graphattn::csr_attention_{forward,backward}: checks,
// allocation, current stream, launch (kernels in csr_attention.cuh).
//
// With GRAPHATTN_CUDA_EMULATION defined (tests only, never in the package
// build) the same code is compiled by a host compiler against the CPU
// emulation of emulation.h and registered as graphattn_emu::* for CPU tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../tensor_params.h"
#include "launch.h"

#ifdef GRAPHATTN_CUDA_EMULATION
#include "csr_attention.cu"
#include "csr_attention_bfloat16.cu"
#include "csr_attention_float.cu"
#include "csr_attention_half.cu"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace graphattn {
namespace gpu {
namespace {

#ifdef GRAPHATTN_CUDA_EMULATION
constexpr const char* kDeviceName = "CPU (CUDA emulation)";
bool on_device(const at::Tensor& t) { return t.is_cpu(); }
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
cudaStream_t current_stream() { return nullptr; }
bool capturing(cudaStream_t) { return false; }
#define GRAPHATTN_CUDA_CHECK(expr) TORCH_CHECK((expr) == cudaSuccess, "graphattn: emulated launch failed")
#else
constexpr const char* kDeviceName = "CUDA";
bool on_device(const at::Tensor& t) { return t.is_cuda(); }
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}
#define GRAPHATTN_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#endif

ScalarType kernel_dtype(const at::Tensor& q) {
  switch (q.scalar_type()) {
    case at::kFloat:
      return ScalarType::Float32;
    case at::kHalf:
      return ScalarType::Float16;
    case at::kBFloat16:
      return ScalarType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, "graphattn: the ", kDeviceName, " kernels take float16, bfloat16 or float32, got ",
                       q.scalar_type(), " (float64 is served on CPU only)");
  }
  return ScalarType::Float32;  // not reached
}

// Every tensor on q's device.
void check_device(const at::Tensor& q, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  TORCH_CHECK(on_device(q), "graphattn: the ", kDeviceName, " kernels got q on ", q.device());
  for (const auto& [name, t] : tensors) {
    if (t == nullptr || !t->defined()) continue;
    TORCH_CHECK(t->device() == q.device(), "graphattn: ", name, " is on ", t->device(), " but q is on ", q.device(),
                "; every tensor of the call must be on one device");
  }
}

void check_head_dims(const at::Tensor& q, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 3 && v.dim() == 3, "graphattn: q, k, v must be [N, H, D]");
  TORCH_CHECK_VALUE(q.size(2) >= 1 && q.size(2) <= kMaxHeadDim && v.size(2) >= 1 && v.size(2) <= kMaxHeadDim,
                    "graphattn: the ", kDeviceName, " kernels take head dims 1..", kMaxHeadDim, ", got D = ",
                    q.size(2), " and Dv = ", v.size(2));
}

void check_edges(const c10::optional<at::Tensor>& bias, const at::Tensor& col) {
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 2 && bias->size(0) == col.numel()),
              "graphattn: bias must be [E, H] with E = ", col.numel(), " (one row per edge)");
}

// Raise what the kernels flagged (the sync is skipped while a CUDA graph is
// captured; the kernels still never read through a bad index).
void check_status(const at::Tensor& workspace, cudaStream_t stream) {
  if (capturing(stream)) return;
  const int64_t bits = workspace[0].item<int64_t>();
  TORCH_CHECK_INDEX(!(bits & kErrorIndex),
                    "graphattn: the CSR holds an edge endpoint or edge id outside its range; rebuild the Graph "
                    "from a valid edge_index");
  TORCH_CHECK(!(bits & kErrorOffsets),
              "graphattn: rowptr/colptr must run non-decreasing from 0 to the number of edges; the Graph does not "
              "match its edges");
}

std::tuple<at::Tensor, at::Tensor> csr_attention_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                                         const at::Tensor& v_in, const at::Tensor& rowptr,
                                                         const at::Tensor& col, const at::Tensor& eid,
                                                         const c10::optional<at::Tensor>& bias, double scale) {
  check_device(q_in, {{"k", &k_in}, {"v", &v_in}, {"rowptr", &rowptr}, {"col", &col}, {"eid", &eid},
                      {"bias", bias.has_value() ? &*bias : nullptr}});
  const DeviceGuard guard(q_in.device());
  const ScalarType dtype = kernel_dtype(q_in);
  check_head_dims(q_in, v_in);
  check_edges(bias, col);
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  at::Tensor out = at::empty({q.size(0), q.size(1), v.size(2)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  ForwardParams p = forward_params(q, k, v, bias, scale, out, lse);
  p.by_target = csr_params(rowptr, col, eid, p.num_dst);
  at::Tensor workspace = at::empty({workspace_entries(p.num_dst, 0)}, q.options().dtype(at::kLong));
  const cudaStream_t stream = current_stream();
  GRAPHATTN_CUDA_CHECK(csr_forward(p, dtype, col.numel(), workspace.data_ptr<int64_t>(), stream));
  check_status(workspace, stream);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> csr_attention_backward(
    const at::Tensor& grad_out_in, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& v_in, const c10::optional<at::Tensor>& bias, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& eid,
    const at::Tensor& colptr, const at::Tensor& row_t, const at::Tensor& eid_t, double scale, bool need_dbias) {
  check_device(q_in, {{"grad_out", &grad_out_in}, {"grad_lse", grad_lse.has_value() ? &*grad_lse : nullptr},
                      {"k", &k_in}, {"v", &v_in}, {"bias", bias.has_value() ? &*bias : nullptr}, {"out", &out_in},
                      {"lse", &lse_in}, {"rowptr", &rowptr}, {"col", &col}, {"eid", &eid}, {"colptr", &colptr},
                      {"row_t", &row_t}, {"eid_t", &eid_t}});
  const DeviceGuard guard(q_in.device());
  const ScalarType dtype = kernel_dtype(q_in);
  check_head_dims(q_in, v_in);
  check_edges(bias, col);
  TORCH_CHECK(row_t.numel() == col.numel(), "graphattn: the transposed CSR has ", row_t.numel(),
              " edges, the CSR ", col.numel());
  const int64_t n_dst = q_in.size(0), heads = q_in.size(1);
  TORCH_CHECK(grad_out_in.dim() == 3 && grad_out_in.size(0) == n_dst && grad_out_in.size(1) == heads &&
                  grad_out_in.size(2) == v_in.size(2) && grad_out_in.scalar_type() == q_in.scalar_type(),
              "graphattn: grad_out must be [N_dst, H, Dv] of the dtype of q");
  TORCH_CHECK(out_in.sizes() == grad_out_in.sizes() && out_in.scalar_type() == q_in.scalar_type(),
              "graphattn: out must be [N_dst, H, Dv] of the dtype of q");
  TORCH_CHECK(lse_in.dim() == 2 && lse_in.size(0) == n_dst && lse_in.size(1) == heads,
              "graphattn: lse must be [N_dst, H]");
  TORCH_CHECK(!grad_lse.has_value() || grad_lse->sizes() == lse_in.sizes(), "graphattn: grad_lse must be [N_dst, H]");

  // The prologue every backward binding shares (tensor_params.h): contiguous last dims, float32
  // lse / grad_lse / Delta (the kernels take no float64), the gradients, and the params.
  BackwardTensors t = backward_tensors(grad_out_in, grad_lse, q_in, k_in, v_in, bias, out_in, lse_in, scale);
  BackwardParams& b = t.params;
  b.fwd.by_target = csr_params(rowptr, col, eid, b.fwd.num_dst);
  b.by_source = csr_params(colptr, row_t, eid_t, b.fwd.num_src);
  at::Tensor grad_bias =
      need_dbias ? at::empty({col.numel(), heads}, t.q.options()) : at::empty({0}, t.q.options());
  b.grad_bias = need_dbias ? grad_bias.data_ptr() : nullptr;
  at::Tensor workspace =
      at::empty({workspace_entries(b.fwd.num_dst, b.fwd.num_src)}, t.q.options().dtype(at::kLong));
  const cudaStream_t stream = current_stream();
  GRAPHATTN_CUDA_CHECK(csr_backward(b, dtype, col.numel(), workspace.data_ptr<int64_t>(), stream));
  check_status(workspace, stream);
  return {t.grad_q, t.grad_k, t.grad_v, grad_bias};
}

}  // namespace

#ifdef GRAPHATTN_CUDA_EMULATION
TORCH_LIBRARY(graphattn_emu, m) {
  m.def("csr_attention_forward(Tensor q, Tensor k, Tensor v, Tensor rowptr, Tensor col, Tensor eid, "
        "Tensor? bias, float scale) -> (Tensor out, Tensor lse)");
  m.def("csr_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
        "Tensor? bias, Tensor out, Tensor lse, Tensor rowptr, Tensor col, Tensor eid, "
        "Tensor colptr, Tensor row_t, Tensor eid_t, float scale, bool need_dbias) "
        "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_bias)");
}
TORCH_LIBRARY_IMPL(graphattn_emu, CPU, m) {
#else
TORCH_LIBRARY_IMPL(graphattn, CUDA, m) {
#endif
  m.impl("csr_attention_forward", &csr_attention_forward);
  m.impl("csr_attention_backward", &csr_attention_backward);
}

}  // namespace gpu
}  // namespace graphattn
