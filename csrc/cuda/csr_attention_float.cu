// The CSR attention launchers for float inputs (kernels in csr_attention.cuh).
#include "csr_attention.cuh"

namespace graphattn {
namespace gpu {

cudaError_t csr_forward_float(const ForwardParams& p, int64_t num_edges, int64_t* workspace, cudaStream_t stream) {
  return detail::forward_launch<float>(p, num_edges, workspace, stream);
}

cudaError_t csr_backward_float(const BackwardParams& b, int64_t num_edges, int64_t* workspace, cudaStream_t stream) {
  return detail::backward_launch<float>(b, num_edges, workspace, stream);
}

}  // namespace gpu
}  // namespace graphattn
