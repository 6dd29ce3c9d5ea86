// The row kernels at the baseline level: the compiler's default target (SSE2 on x86-64,
// the architecture's baseline elsewhere). Always built; the fallback of every CPU.
#define GRAPHATTN_CPU_ISA_NS baseline
#define GRAPHATTN_CPU_ISA_NAME "baseline"
#define GRAPHATTN_CPU_TARGET
#define GRAPHATTN_CPU_AVX2 0
#include "attention_rows.h"
