// graphattn's CUDA launchers for the CSR attention ops: pick the per-dtype
// launcher (csr_attention_<type>.cu; kernels in csr_attention.cuh).
#include "launch.h"

namespace graphattn {
namespace gpu {

cudaError_t csr_forward(const ForwardParams& p, ScalarType dtype, int64_t num_edges, int64_t* workspace,
                        cudaStream_t stream) {
  switch (dtype) {
    case ScalarType::Float32:
      return csr_forward_float(p, num_edges, workspace, stream);
    case ScalarType::Float16:
      return csr_forward_half(p, num_edges, workspace, stream);
    case ScalarType::BFloat16:
      return csr_forward_bfloat16(p, num_edges, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t csr_backward(const BackwardParams& b, ScalarType dtype, int64_t num_edges, int64_t* workspace,
                         cudaStream_t stream) {
  switch (dtype) {
    case ScalarType::Float32:
      return csr_backward_float(b, num_edges, workspace, stream);
    case ScalarType::Float16:
      return csr_backward_half(b, num_edges, workspace, stream);
    case ScalarType::BFloat16:
      return csr_backward_bfloat16(b, num_edges, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace gpu
}  // namespace graphattn
