// The run-time choice of the CPU kernels' instruction-set level (see isa.h), and the
// op graphattn::cpu_isa that tells Python (python -m graphattn.info, the tests) which
// level a call would run and which levels this CPU can run.
#include "isa.h"

#include <torch/library.h>

#include <cstdlib>
#include <cstring>

namespace graphattn {
namespace cpu {

const char* isa_name(CpuIsa isa) { return isa == CpuIsa::kAvx2 ? "avx2" : "baseline"; }

namespace {

CpuIsa detect() {
#if GRAPHATTN_CPU_HAVE_AVX2_LEVEL && defined(__GNUC__)
  // libgcc's checks include the operating system's support (XSAVE state) for the YMM registers.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return CpuIsa::kAvx2;
#endif
  return CpuIsa::kBaseline;
}

}  // namespace

CpuIsa best_isa() {
  static const CpuIsa best = detect();
  return best;
}

CpuIsa active_isa() {
  const CpuIsa best = best_isa();
  const char* env = std::getenv("GRAPHATTN_CPU_ISA");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return best;
  CpuIsa wanted;
  if (std::strcmp(env, "baseline") == 0)
    wanted = CpuIsa::kBaseline;
  else if (std::strcmp(env, "avx2") == 0)
    wanted = CpuIsa::kAvx2;
  else
    TORCH_CHECK_VALUE(false, "graphattn: GRAPHATTN_CPU_ISA must be auto, baseline or avx2, got '", env, "'");
  TORCH_CHECK_VALUE(static_cast<int>(wanted) <= static_cast<int>(best), "graphattn: GRAPHATTN_CPU_ISA=", env,
              " but this CPU (or this build) runs at most '", isa_name(best), "'");
  return wanted;
}

const RowKernels& row_kernels() {
#if GRAPHATTN_CPU_HAVE_AVX2_LEVEL
  if (active_isa() == CpuIsa::kAvx2) return avx2::kRowKernels;
#else
  (void)active_isa();  // still rejects a bad GRAPHATTN_CPU_ISA
#endif
  return baseline::kRowKernels;
}

namespace {

// [the level a call runs now, then every level this CPU and build can run, lowest first]
std::vector<std::string> cpu_isa() {
  std::vector<std::string> out{isa_name(active_isa())};
  for (int l = 0; l <= static_cast<int>(best_isa()); ++l) out.emplace_back(isa_name(static_cast<CpuIsa>(l)));
  return out;
}

}  // namespace

// A query, not a tensor op: kept with the code it describes rather than among the schemas of
// csrc/graphattn.cpp. With no tensor argument it runs as a catch-all kernel.
TORCH_LIBRARY_FRAGMENT(graphattn, m) { m.def("cpu_isa() -> str[]", &cpu_isa); }

}  // namespace cpu
}  // namespace graphattn
