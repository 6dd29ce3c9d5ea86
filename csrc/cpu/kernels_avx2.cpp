// The row kernels at the AVX2 level: AVX2 + FMA + F16C (Intel Haswell, AMD Zen and later),
// given to each kernel function by a target attribute rather than to this file by -mavx2
// (isa.h says why). Run only where best_isa() found those features. Empty off x86-64.
#include "rows_common.h"

#if GRAPHATTN_CPU_HAVE_AVX2_LEVEL
#define GRAPHATTN_CPU_ISA_NS avx2
#define GRAPHATTN_CPU_ISA_NAME "avx2"
#define GRAPHATTN_CPU_TARGET __attribute__((target("avx2,fma,f16c")))
#define GRAPHATTN_CPU_AVX2 1
#include "attention_rows.h"
#endif
