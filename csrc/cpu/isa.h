// Run-time choice of the instruction-set level of the CPU row kernels.
//
// The row kernels (attention_rows.h) are compiled once per level, each copy in its own
// namespace (graphattn::cpu::baseline, graphattn::cpu::avx2), and the bindings call
// row_kernels(), which picks a copy per call from the CPU's features, as ATen picks
// its per-capability kernels. Why function attributes rather than per-file flags
// (-mavx2 on one translation unit, ATen's way):
//  - setuptools cannot give one source file its own flags, and
//  - a whole file compiled with -mavx2 also compiles every inline function of the
//    headers it includes (ATen, c10, std) with AVX2; the linker keeps one copy of each
//    such function for the whole library, and if it keeps the AVX2 one, baseline code
//    calls it and dies of SIGILL on a CPU without AVX2.
// So the level's code is only what carries GRAPHATTN_CPU_TARGET (target("avx2,fma,f16c")),
// all of it inside the level's namespace (so no symbol of it is shared with another level);
// header functions inlined into it are private copies; their out-of-line copies stay baseline.
// GCC does not give a lambda the target of its enclosing function, so the
// at::parallel_for bodies only call the per-row functions that carry the target.
//
// The level of a call: the best this CPU and this build have, unless the environment
// variable GRAPHATTN_CPU_ISA (auto | baseline | avx2) asks for another; it is read at
// every call, so tests and benchmarks can compare levels in one process. Asking for a
// level this CPU or build lacks is an error, never an illegal instruction.
#pragma once

#include <c10/core/ScalarType.h>

#include <string>
#include <vector>

#include "rows_common.h"

namespace graphattn {
namespace cpu {

enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1 };

// One level's entry points, each dispatching on the dtype inside.
struct RowKernels {
  const char* name;
  void (*csr_forward)(const ForwardParams& p, const CsrNeighbours& nb, at::ScalarType dtype, int score_kind);
  // The target pass (also fills delta and the edge scratch), then the source pass.
  void (*csr_backward)(const BackwardParams& b, const CsrNeighbours& by_target, const CsrNeighbours& by_source,
                       at::ScalarType dtype, int score_kind);
  void (*segment_forward)(const ForwardParams& p, const SegmentNeighbours& nb, at::ScalarType dtype);
  void (*segment_backward)(const BackwardParams& b, const SegmentNeighbours& nb, at::ScalarType dtype);
};

namespace baseline {
extern const RowKernels kRowKernels;
}
#if GRAPHATTN_CPU_HAVE_AVX2_LEVEL
namespace avx2 {
extern const RowKernels kRowKernels;
}
#endif

const char* isa_name(CpuIsa isa);
// The best level this CPU and this build can run.
CpuIsa best_isa();
// The level of this call: best_isa(), or what GRAPHATTN_CPU_ISA asks for (checked).
CpuIsa active_isa();
const RowKernels& row_kernels();

}  // namespace cpu
}  // namespace graphattn
