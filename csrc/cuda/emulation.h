// A CPU emulation of the few CUDA features csr_attention.cuh uses, so that the
// CUDA kernels and launchers can be compiled by a host compiler and run on a
// machine without a GPU (tests/test_cuda_emulation.py, on every CI run).
//
// Only for testing the kernels' logic. Blocks run one after another; the
// threads of a block are fibers (ucontext) on the calling thread, switched at
// every synchronisation point: a warp shuffle (through a per-warp barrier,
// like the hardware with a full mask it needs all 32 lanes of the warp) and
// __syncthreads (a block barrier). __shared__ becomes `static`, atomics are
// plain read-modify-writes (one fiber runs at a time).
//
// Fibers rather than one std::thread per CUDA thread: a shuffle costs a few
// context switches in user space instead of waking 32 OS threads, about ten
// times faster on 2 cores, and two more checks come for free:
// * a barrier that not every thread reaches (a divergent shuffle or
//   __syncthreads) would hang on a GPU; here it throws, naming the block;
// * a load from an address that is not a multiple of its width (a GPU faults,
//   the CPU does not) is raised after the block;
// * the order in which the threads of a block run between two barriers is
//   the thread order, or its reverse with GRAPHATTN_EMULATION_REVERSE=1 set
//   when the launch starts. A kernel that reads shared memory another thread
//   writes without a barrier between them gets a different result in one of
//   the two orders; tests compare the two bit for bit.
//
// Included by csr_attention.cuh when GRAPHATTN_CUDA_EMULATION is defined;
// needs C++17 and the CUDA include directory (cuda_fp16.h works on the host).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
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

// A barrier of `count` fibers: the last to arrive releases the others (they
// see `generation` move on when they are next resumed).
struct Barrier {
  unsigned count = 0, arrived = 0;
  uint64_t generation = 0;
};

struct Warp {
  Barrier bar;
  uint64_t slot[32];
};

struct Fiber {
  ucontext_t context;
  bool done = false;
};

// The block being run: its fibers, the scheduler's context, the barriers.
struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Barrier bar;
  std::vector<Warp> warps;
  uint64_t events = 0;  // arrivals and exits: no change over a whole sweep = deadlock
  const void* misaligned = nullptr;  // the first load a GPU would fault on, and its width
  size_t misaligned_bytes = 0;
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
};

inline thread_local Block* tl_block = nullptr;

// Stacks, kept from launch to launch (a kernel frame is a few KB; 256 KB leaves
// room for -O0 builds and sanitizers).
constexpr size_t kStackBytes = 256 * 1024;
inline thread_local std::vector<std::unique_ptr<char[]>> tl_stacks;

inline void yield() {
  Block& b = *tl_block;
  swapcontext(&b.fibers[threadIdx.x].context, &b.scheduler);
}

inline void wait(Barrier& bar) {
  Block& b = *tl_block;
  ++b.events;
  const uint64_t generation = bar.generation;
  if (++bar.arrived == bar.count) {
    bar.arrived = 0;
    ++bar.generation;
    return;
  }
  while (bar.generation == generation) yield();
}

inline uint64_t exchange(uint64_t value, int src_lane) {
  Warp& w = tl_block->warps[threadIdx.x / 32];
  w.slot[threadIdx.x % 32] = value;
  wait(w.bar);
  const uint64_t got = w.slot[src_lane];
  wait(w.bar);
  return got;
}

inline void fiber_main(unsigned index) {
  Block& b = *tl_block;
  b.body(b.arg);
  b.fibers[index].done = true;
  ++b.events;
  // Returning resumes uc_link, the scheduler.
}

template <typename F>
void run(unsigned grid, unsigned block, F body) {
  const char* env = std::getenv("GRAPHATTN_EMULATION_REVERSE");
  const bool reverse = env != nullptr && env[0] == '1';
  while (tl_stacks.size() < block) tl_stacks.emplace_back(new char[kStackBytes]);
  for (unsigned bi = 0; bi < grid; ++bi) {
    Block state;
    state.fibers.resize(block);
    state.bar.count = block;
    state.warps.resize((block + 31) / 32);
    for (unsigned w = 0; w < state.warps.size(); ++w)
      state.warps[w].bar.count = (w + 1) * 32 <= block ? 32 : block % 32;
    state.body = [](void* f) { (*static_cast<F*>(f))(); };
    state.arg = &body;
    tl_block = &state;
    blockIdx.x = bi;
    blockDim.x = block;
    gridDim.x = grid;
    for (unsigned t = 0; t < block; ++t) {
      ucontext_t& c = state.fibers[t].context;
      getcontext(&c);
      c.uc_stack.ss_sp = tl_stacks[t].get();
      c.uc_stack.ss_size = kStackBytes;
      c.uc_link = &state.scheduler;
      makecontext(&c, reinterpret_cast<void (*)()>(&fiber_main), 1, t);
    }
    // Sweep over the fibers until all are done, each resumed until it waits or ends.
    for (unsigned left = block; left > 0;) {
      const uint64_t before = state.events;
      for (unsigned n = 0; n < block; ++n) {
        const unsigned t = reverse ? block - 1 - n : n;
        if (state.fibers[t].done) continue;
        threadIdx.x = t;
        swapcontext(&state.scheduler, &state.fibers[t].context);
        if (state.fibers[t].done) --left;
      }
      if (left > 0 && state.events == before) {
        tl_block = nullptr;
        throw std::runtime_error("graphattn CUDA emulation: deadlock in block " + std::to_string(bi) + " of " +
                                 std::to_string(grid) +
                                 ": its threads wait at a shuffle or __syncthreads that not all of them reach");
      }
    }
    tl_block = nullptr;
    if (state.misaligned != nullptr)
      throw std::runtime_error("graphattn CUDA emulation: a " + std::to_string(state.misaligned_bytes) +
                               "-byte load from an address that is not a multiple of its size (a GPU faults)");
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

inline void sync_block() { emu::wait(emu::tl_block->bar); }

// One fiber runs at a time and only switches at a barrier: plain read-modify-writes are atomic.
inline unsigned long long atomic_add(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}

inline void atomic_or(unsigned long long* p, unsigned long long v) { *p |= v; }

// The CPU does misaligned loads; the GPU faults on them, so they are recorded and raised after the block.
template <typename R>
inline R ldg(const R* p) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(R) != 0 && emu::tl_block->misaligned == nullptr) {
    emu::tl_block->misaligned = p;
    emu::tl_block->misaligned_bytes = sizeof(R);
  }
  R value;
  std::memcpy(&value, p, sizeof(R));
  return value;
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
