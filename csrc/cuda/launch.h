// The CUDA launchers of csr_attention*.cu, as the binding sees them.
// Plain types only (params.h and the CUDA runtime API): no torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../params.h"

namespace graphattn {
namespace gpu {

enum class ScalarType { Float32, Float16, BFloat16 };

// Largest head dim (D and Dv) the kernels are compiled for.
constexpr int64_t kMaxHeadDim = 256;

// Scratch the launchers need: one int64 buffer of this many entries (no
// initialisation needed; the launchers clear what must start at zero).
// Entry 0 holds the error bits below after the launch; the rest are hub
// counters and the lists of hub rows (targets, then sources).
inline int64_t workspace_entries(int64_t num_dst, int64_t num_src) { return 8 + num_dst + num_src; }

// Error bits the kernels leave in workspace[0]. The kernels never read through
// a bad index: they skip the edge (or treat the row as empty) and set a bit.
constexpr int64_t kErrorIndex = 1;    // a CSR endpoint or edge id outside its range
constexpr int64_t kErrorOffsets = 2;  // rowptr/colptr not non-decreasing from 0 to E

// Forward: p.out [num_dst, H, Dv] and p.lse [num_dst, H] float32, both contiguous.
// The CSR arrays of p.by_target hold num_edges entries.
cudaError_t csr_forward(const ForwardParams& p, ScalarType dtype, int64_t num_edges, int64_t* workspace,
                        cudaStream_t stream);

// Backward: b.fwd.out contiguous, b.fwd.lse / b.grad_lse / b.delta float32
// [num_dst, H] contiguous; grads contiguous (grad_bias [num_edges, H] or null).
cudaError_t csr_backward(const BackwardParams& b, ScalarType dtype, int64_t num_edges, int64_t* workspace,
                         cudaStream_t stream);

// The same per element type, one .cu file each (csr_attention_<type>.cu), so
// that the build compiles them in parallel; csr_attention.cu dispatches.
#define GRAPHATTN_DECLARE_CSR_LAUNCHERS(suffix)                                                           \
  cudaError_t csr_forward_##suffix(const ForwardParams& p, int64_t num_edges, int64_t* workspace,        \
                                   cudaStream_t stream);                                                 \
  cudaError_t csr_backward_##suffix(const BackwardParams& b, int64_t num_edges, int64_t* workspace,      \
                                    cudaStream_t stream);
GRAPHATTN_DECLARE_CSR_LAUNCHERS(float)
GRAPHATTN_DECLARE_CSR_LAUNCHERS(half)
GRAPHATTN_DECLARE_CSR_LAUNCHERS(bfloat16)
#undef GRAPHATTN_DECLARE_CSR_LAUNCHERS

}  // namespace gpu
}  // namespace graphattn
