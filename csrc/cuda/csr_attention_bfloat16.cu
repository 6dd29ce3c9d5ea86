// The CSR attention launchers for __nv_bfloat16 inputs (kernels in csr_attention.cuh).
#include "csr_attention.cuh"

namespace graphattn {
namespace gpu {

cudaError_t csr_forward_bfloat16(const ForwardParams& p, int64_t num_edges, int64_t* workspace, cudaStream_t stream) {
  return detail::forward_launch<__nv_bfloat16>(p, num_edges, workspace, stream);
}

cudaError_t csr_backward_bfloat16(const BackwardParams& b, int64_t num_edges, int64_t* workspace, cudaStream_t stream) {
  return detail::backward_launch<__nv_bfloat16>(b, num_edges, workspace, stream);
}

}  // namespace gpu
}  // namespace graphattn
