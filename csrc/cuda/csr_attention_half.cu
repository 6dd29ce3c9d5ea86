// The CSR attention launchers for __half inputs (kernels in csr_attention.cuh).
#include "csr_attention.cuh"

namespace graphattn {
namespace gpu {

cudaError_t csr_forward_half(const ForwardParams& p, int64_t num_edges, int64_t* workspace, cudaStream_t stream) {
  return detail::forward_launch<__half>(p, num_edges, workspace, stream);
}

cudaError_t csr_backward_half(const BackwardParams& b, int64_t num_edges, int64_t* workspace, cudaStream_t stream) {
  return detail::backward_launch<__half>(b, num_edges, workspace, stream);
}

}  // namespace gpu
}  // namespace graphattn
