// Just enough of CUDA to run this backend's kernels on the CPU, for tests on
// machines without a GPU (see emu/README.md). Each block's threads run as
// cooperative fibers on one OS thread, so __syncthreads and warp shuffles
// have their real meaning; blocks run one after another. Barriers are
// checked strictly: a barrier or shuffle that some thread of its block/warp
// has already left by exiting is reported, since on a GPU it is undefined.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
using cudaStream_t = struct CUstream_st*;

inline float __half2float(__half v) { return static_cast<float>(v); }
inline float __bfloat162float(__nv_bfloat16 v) { return static_cast<float>(v); }
inline __half __float2half_rn(float v) { return __half(v); }
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16(v); }
inline float __expf(float v) { return std::exp(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline unsigned __float_as_uint(float v) {
  unsigned u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}
template <typename T>
inline void __stwb(T* dst, T v) {
  *dst = v;
}
inline float __uint_as_float(unsigned u) {
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}
inline unsigned short __half_as_ushort(__half v) { return v.x; }
inline __half __ushort_as_half(unsigned short u) { return __half(u, __half::from_bits()); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.x; }

namespace causal_conv1d::cuda::emu {

struct ThreadState {
  dim3 thread_idx;
};

ThreadState& current();
dim3& block_idx();
dim3& block_dim();
dim3& grid_dim();

// Runs body once per thread of a 1-D grid of 1-D blocks.
void run_grid(unsigned blocks, unsigned threads, const std::function<void()>& body);

void syncthreads();
// The value `v` of lane src_lane(own lane) of the calling thread's warp.
float shfl(float v, unsigned (*src_lane)(unsigned lane, int arg), int arg);

}  // namespace causal_conv1d::cuda::emu

#define threadIdx (::causal_conv1d::cuda::emu::current().thread_idx)
#define blockIdx (::causal_conv1d::cuda::emu::block_idx())
#define blockDim (::causal_conv1d::cuda::emu::block_dim())
#define gridDim (::causal_conv1d::cuda::emu::grid_dim())

inline void __syncthreads() { ::causal_conv1d::cuda::emu::syncthreads(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  return ::causal_conv1d::cuda::emu::shfl(
      v, [](unsigned lane, int m) { return lane ^ static_cast<unsigned>(m); }, lane_mask);
}
inline float __shfl_up_sync(unsigned, float v, int delta) {
  return ::causal_conv1d::cuda::emu::shfl(
      v, [](unsigned lane, int dl) { return lane >= static_cast<unsigned>(dl) ? lane - dl : lane; },
      delta);
}
inline float __shfl_down_sync(unsigned, float v, int delta) {
  return ::causal_conv1d::cuda::emu::shfl(
      v, [](unsigned lane, int dl) { return lane + dl < 32u ? lane + dl : lane; }, delta);
}
inline float __shfl_sync(unsigned, float v, int src) {
  return ::causal_conv1d::cuda::emu::shfl(
      v, [](unsigned, int s) { return static_cast<unsigned>(s) % 32u; }, src);
}
inline float atomicAdd(float* address, float v) {
  const float old = *address;
  *address = old + v;
  return old;
}
