// Attention dropout's keep mask as a counter-based hash of (seed, edge, head):
// the same bits as graphattn/dropout.py and kernels/dropout_hash.py, so every
// backend drops the same weights for one seed, and a backward regenerates the
// forward's mask instead of storing it. Plain C++ (host and device).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GRAPHATTN_HOST_DEVICE __host__ __device__
#else
#define GRAPHATTN_HOST_DEVICE
#endif

namespace graphattn {

struct DropoutParams {
  uint32_t seed0 = 0, seed1 = 0;
  uint32_t threshold = 0;  // keep when the 24-bit draw is >= threshold; 0 = no dropout
  double keep_scale = 1.0;  // 1 / (1 - p), or 0 when p = 1
  bool enabled = false;
};

GRAPHATTN_HOST_DEVICE inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Whether edge `edge` (its edge_index column) keeps head `head`.
GRAPHATTN_HOST_DEVICE inline bool dropout_keep(const DropoutParams& d, int64_t edge, int64_t head) {
  uint32_t x = mix32(static_cast<uint32_t>(edge) ^ d.seed0);
  x = mix32(x ^ (static_cast<uint32_t>(head) * 0x9E3779B9U + d.seed1));
  return (x >> 8) >= d.threshold;
}

inline DropoutParams dropout_params(double p, int64_t seed0, int64_t seed1) {
  DropoutParams d;
  d.enabled = p > 0;
  d.seed0 = static_cast<uint32_t>(seed0);
  d.seed1 = static_cast<uint32_t>(seed1);
  d.threshold = static_cast<uint32_t>(std::ceil(p * 16777216.0));
  d.keep_scale = p < 1 ? 1.0 / (1.0 - p) : 0.0;
  return d;
}

}  // namespace graphattn
