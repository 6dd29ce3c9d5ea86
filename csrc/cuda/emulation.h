// A CPU emulation of the few CUDA features csr_attention.cuh uses, so that the
// CUDA kernels and launchers can be compiled by a host compiler and run on a
// machine without a GPU (tests/test_cuda_backend.py does this when asked to).
//
// Only for testing the kernels' logic: every block runs as blockDim.x
// std::threads (blocks one after another, so __shared__ becomes `static`),
// warp shuffles exchange values through a per-warp barrier, atomics are
// std::atomic_ref. Like the hardware with a full mask, a shuffle needs all 32
// lanes of the warp to reach it: divergent shuffles deadlock here.
//
// Included by csr_attention.cuh when GRAPHATTN_CUDA_EMULATION is defined;
// needs C++20 and the CUDA include directory (cuda_fp16.h works on the host).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct GraphattnEmuDim {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local GraphattnEmuDim threadIdx, blockIdx, blockDim, gridDim;

#define GA_DEVICE inline
#define GA_GLOBAL
#define GA_LAUNCH_BOUNDS(threads)
#define GA_SHARED static

namespace graphattn {
namespace gpu {
namespace emu {

struct Warp {
  std::barrier<> bar{32};
  uint64_t slot[32];
};

struct Block {
  explicit Block(unsigned threads) : bar(threads), warps(new Warp[(threads + 31) / 32]) {}
  std::barrier<> bar;
  std::unique_ptr<Warp[]> warps;
};

inline thread_local Block* tl_block = nullptr;

inline uint64_t exchange(uint64_t value, int src_lane) {
  Warp& w = tl_block->warps[threadIdx.x / 32];
  w.slot[threadIdx.x % 32] = value;
  w.bar.arrive_and_wait();
  const uint64_t got = w.slot[src_lane];
  w.bar.arrive_and_wait();
  return got;
}

template <typename F>
void run(unsigned grid, unsigned block, F body) {
  for (unsigned b = 0; b < grid; ++b) {
    Block state(block);
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
      threads.emplace_back([&, b, t] {
        threadIdx.x = t;
        blockIdx.x = b;
        blockDim.x = block;
        gridDim.x = grid;
        tl_block = &state;
        body();
      });
    }
    for (auto& th : threads) th.join();
  }
}

}  // namespace emu

namespace dev {

constexpr unsigned kFullMask = 0xffffffffu;

inline float shfl_xor(float x, int mask) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const uint32_t got = static_cast<uint32_t>(emu::exchange(bits, (threadIdx.x % 32) ^ mask));
  float y;
  std::memcpy(&y, &got, 4);
  return y;
}

inline int64_t shfl(int64_t x, int src_lane) {
  return static_cast<int64_t>(emu::exchange(static_cast<uint64_t>(x), src_lane));
}

inline void sync_block() { emu::tl_block->bar.arrive_and_wait(); }

inline unsigned long long atomic_add(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}

inline void atomic_or(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long>(*p).fetch_or(v);
}

template <typename R>
inline R ldg(const R* p) {
  return *p;
}

inline float fast_exp(float x) { return std::exp(x); }

}  // namespace dev

namespace host {

inline cudaError_t memset_async(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

template <typename Kernel>
inline int resident_blocks(Kernel, int /*threads*/) {
  return 2;  // two "SMs" of one block each: enough to exercise the work queue
}

inline cudaError_t last_error() { return cudaSuccess; }

template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), unsigned grid, unsigned block, cudaStream_t, Args... args) {
  emu::run(grid, block, [=] { kernel(args...); });
}

}  // namespace host
}  // namespace gpu
}  // namespace graphattn
