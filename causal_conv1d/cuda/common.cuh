// Shared by the CUDA kernels: element types and conversions, vector packs,
// activation, index helpers and the launch helper. Deliberately free of
// ATen/torch headers so that every .cu file compiles in seconds.
//
// With CAUSAL_CONV1D_CUDA_EMU defined the same sources compile as plain C++
// against tests/cuda_emu/cuda_emu.h, which runs each block's threads on the
// CPU; that is how the kernels' indexing is tested on machines without a GPU.
#pragma once

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../params.h"

#ifdef CAUSAL_CONV1D_CUDA_EMU
#include "cuda_emu.h"  // tests/cuda_emu/: on the emulator build's include path only
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#endif

namespace causal_conv1d::cuda {

// Threads per block for every kernel (a multiple of the warp size).
constexpr int kThreads = 128;
constexpr int kWarp = 32;

// ---------------------------------------------------------------------------
// element types: x/out/states are X (float, __half or __nv_bfloat16);
// arithmetic is always float.

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename X> __device__ __forceinline__ X from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Weight and bias have their own dtype; they are read a handful of times per
// thread, so a runtime switch costs nothing and saves 3x the instantiations.
// A load in two halves: param_bits issues it (a 16-bit element's bits in the
// low half), param_value converts, so that a kernel can issue it with other
// loads and wait for all of them at once.
__device__ __forceinline__ uint32_t param_bits(const void* base, int64_t i, DType t) {
  if (t == DType::Float16 || t == DType::BFloat16) return static_cast<const uint16_t*>(base)[i];
  return static_cast<const uint32_t*>(base)[i];
}
__device__ __forceinline__ float param_value(uint32_t bits, DType t) {
  switch (t) {
    case DType::Float16: return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
    case DType::BFloat16: return __uint_as_float(bits << 16);
    default: return __uint_as_float(bits);
  }
}
__device__ __forceinline__ float load_param(const void* base, int64_t i, DType t) {
  return param_value(param_bits(base, i, t), t);
}

// weight[d, k] and bias[d] (0 when there is no bias) as float.
__device__ __forceinline__ float weight_at(const ConvParams& p, int64_t d, int64_t k) {
  return load_param(p.weight.data, d * p.weight.s0 + k * p.weight.s1, p.weight_dtype);
}
__device__ __forceinline__ float bias_at(const ConvParams& p, int64_t d) {
  return p.bias.data ? load_param(p.bias.data, d * p.bias.s0, p.weight_dtype) : 0.f;
}

// The activation divides with __fdividef (a reciprocal and a multiply, 2 ulp)
// rather than the IEEE division, whose range checks and slow path cost more
// than the rest of a bf16 forward per element. Its one deviation: for a
// denominator above 2^126 (v < -87) it returns 0, which is where silu and
// sigmoid are below 1e-36 anyway. NaN and +-Inf give what x * sigmoid(x)
// gives in PyTorch (silu(-Inf) is NaN there too).
//
// exp(-v) is 2^(-v * log2(e)) by one MUFU.EX2 that flushes denormal results
// to 0 (v > 87, where 1 + exp(-v) is 1 in float anyway); __expf would add a
// compare and two multiplies per element to keep them.
__device__ __forceinline__ float exp_neg(float v) {
  const float t = v * -1.4426950408889634f;
#ifdef __CUDA_ARCH__
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(t));
  return r;
#else
  return std::exp2(t);
#endif
}
__device__ __forceinline__ float sigmoid(float v) { return __fdividef(1.f, 1.f + exp_neg(v)); }
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.f + exp_neg(v)); }

// silu of a forward output stored as X. For 16-bit X it is v/2 * (1 +
// tanh(v/2)) by one MUFU.TANH (tanh.approx.f32, relative error 2^-11)
// instead of EX2 and RCP: a shorter chain and half the MUFU work per
// element, which shows in the 16-bit forward: its two-byte elements leave
// less memory time per element to hide the activation in.
// Its absolute error, at most 2.5e-4 * |v|, is under 1/16 of a bf16 ulp of
// v and half of a fp16 one (within the spec's tolerances, far from them for
// bf16); fp32 outputs keep silu().
template <typename X>
__device__ __forceinline__ float silu_out(float v) {
  if constexpr (sizeof(X) == 2) {
    const float h = 0.5f * v;
#ifdef __CUDA_ARCH__
    float t;
    asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(h));
#else
    const float t = std::tanh(h);
#endif
    return fmaf(h, t, h);
  } else {
    return silu(v);
  }
}

// d silu(y) / dy = s * (1 + y * (1 - s)), s = sigmoid(y)
__device__ __forceinline__ float silu_grad(float y) {
  const float s = sigmoid(y);
  return s * (1.f + y * (1.f - s));
}

// N elements of T moved as one aligned load/store (16 bytes for 8 halves).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Whole-pack loads and stores as 4-, 8- or 16-byte words. Assigning a Pack
// of __half/__nv_bfloat16 (class types with their own assignment) compiles
// to one 2-byte access per element or pair: several store instructions per
// 16 bytes, each a partial write of every sector it touches, which held the
// bf16 kernels to half the copy bandwidth. The words are built from the
// elements' bits instead.
__device__ __forceinline__ uint32_t bits_of(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint32_t bits_of(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t bits_of(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* src) {
  return *reinterpret_cast<const Pack<T, N>*>(src);  // loads do compile to one vector load
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* dst, const Pack<T, N>& pack) {
  constexpr int kPerWord = 4 / static_cast<int>(sizeof(T)), kWords = N / kPerWord;
  static_assert(kWords == 1 || kWords == 2 || kWords == 4, "4, 8 or 16 bytes");
  uint32_t w[kWords];
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    w[i] = bits_of(pack.v[i * kPerWord]);
    if constexpr (kPerWord == 2) w[i] |= bits_of(pack.v[i * kPerWord + 1]) << 16;
  }
  // __stwb (a plain store, written as PTX): with an ordinary assignment the
  // compiler was still seen splitting the 16-byte word into four 4-byte stores.
  if constexpr (kWords == 4) {
    uint4 u;
    u.x = w[0], u.y = w[1], u.z = w[2], u.w = w[3];
    __stwb(reinterpret_cast<uint4*>(dst), u);
  } else if constexpr (kWords == 2) {
    uint2 u;
    u.x = w[0], u.y = w[1];
    __stwb(reinterpret_cast<uint2*>(dst), u);
  } else {
    __stwb(reinterpret_cast<unsigned int*>(dst), w[0]);
  }
}

// Global -> shared copy of one 4/8/16-byte aligned element that does not
// wait for the data (cp.async on sm_80+; a plain copy before that), so a
// thread can have all its tile loads in flight without holding registers.
// copy_async_wait() waits for this thread's copies; a __syncthreads() after
// it publishes them to the block.
template <typename T>
__device__ __forceinline__ void copy_async(T* dst_shared, const T* src_global) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 16, "cp.async moves 4, 8 or 16 bytes");
#ifdef CAUSAL_CONV1D_CUDA_EMU
  *dst_shared = *src_global;
#else
  __pipeline_memcpy_async(dst_shared, src_global, sizeof(T));
#endif
}

__device__ __forceinline__ void copy_async_wait() {
#ifndef CAUSAL_CONV1D_CUDA_EMU
  __pipeline_commit();
  __pipeline_wait_prior(0);
#endif
}

// For copies kept in flight across loop iterations: copy_async_commit()
// closes the group of this thread's copies issued since the last commit
// (an empty group is fine), copy_async_wait_prior<N>() waits until at most
// the N newest groups are still in flight.
__device__ __forceinline__ void copy_async_commit() {
#ifndef CAUSAL_CONV1D_CUDA_EMU
  __pipeline_commit();
#endif
}
template <int N>
__device__ __forceinline__ void copy_async_wait_prior() {
#ifndef CAUSAL_CONV1D_CUDA_EMU
  __pipeline_wait_prior(N);
#endif
}

// Elements per 16-byte vector.
template <typename X> constexpr int kVec16 = 16 / static_cast<int>(sizeof(X));

// true when a strided view's element (i, j, k) addresses are multiples of
// `elems` elements whenever the index along the vector axis is, i.e. the
// base is aligned and every other used stride is a multiple of `elems`.
// (A dimension of size 1 never moves the address, so its stride is ignored.)
inline bool vector_aligned(const void* data, int64_t elem_bytes, int64_t elems,
                           int64_t s_a, int64_t n_a, int64_t s_b, int64_t n_b) {
  const auto addr = reinterpret_cast<uintptr_t>(data);
  if (addr % static_cast<uintptr_t>(elem_bytes * elems) != 0) return false;
  if (n_a > 1 && s_a % elems != 0) return false;
  if (n_b > 1 && s_b % elems != 0) return false;
  return true;
}

// ---------------------------------------------------------------------------
// indices: 1-D grids over 64-bit work counts, walked with grid-stride loops,
// so neither B nor D nor L is limited by grid dimensions.

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Blocks for `work` items of `per_block` each; capped (the kernels loop).
inline unsigned grid_for(int64_t work, int64_t per_block = kThreads) {
  constexpr int64_t kMaxBlocks = int64_t{1} << 20;
  int64_t blocks = (work + per_block - 1) / per_block;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Lane moves within a warp (all 32 lanes take part): the value of lane
// `lane - delta` (up) or `lane + delta` (down), a lane's own value where that
// lane does not exist, and the value of lane `src` (from).
__device__ __forceinline__ float lane_up(float v, int delta) {
  return __shfl_up_sync(0xffffffffu, v, delta);
}
__device__ __forceinline__ float lane_down(float v, int delta) {
  return __shfl_down_sync(0xffffffffu, v, delta);
}
__device__ __forceinline__ float lane_from(float v, int src) {
  return __shfl_sync(0xffffffffu, v, src);
}

// One wave of resident blocks of kKernel (kThreads threads each), or fewer
// when `work` threads need fewer: for kernels whose warps loop over their
// work and keep the next item's loads in flight during this one's
// arithmetic. The wave is asked of the device once per device and kernel;
// grid_for's answer when the device cannot be asked.
template <auto kKernel>
inline unsigned resident_grid(int64_t work) {
  const unsigned want = grid_for(work);
#ifdef CAUSAL_CONV1D_CUDA_EMU
  return want < 3u ? want : 3u;  // a few blocks, so that warps loop over several items
#else
  constexpr int kMaxDevices = 64;
  static std::atomic<int64_t> wave_on[kMaxDevices];  // 0: not asked yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    (void)cudaGetLastError();  // not this launch's error
    return want;
  }
  int64_t wave = wave_on[device].load(std::memory_order_relaxed);
  if (wave == 0) {
    int sms = 0, per_sm = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, kThreads, 0) != cudaSuccess ||
        sms <= 0 || per_sm <= 0) {
      (void)cudaGetLastError();
      return want;
    }
    wave = static_cast<int64_t>(sms) * per_sm;
    wave_on[device].store(wave, std::memory_order_relaxed);
  }
  return want < wave ? want : static_cast<unsigned>(wave);
#endif
}

// Sum over the 32 lanes of a warp; every lane gets the total. The xor
// butterfly has a fixed order, so the result is the same on every run.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = 16; m >= 1; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Launch kernel<<<grid, kThreads, 0, stream>>>(args...).
template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), unsigned grid, cudaStream_t stream, Args&&... args) {
#ifdef CAUSAL_CONV1D_CUDA_EMU
  emu::run_grid(grid, kThreads, [&] { kernel(args...); });
  (void)stream;
#else
  kernel<<<grid, kThreads, 0, stream>>>(static_cast<KArgs>(args)...);
#endif
}

// Tags that carry a type or a width through a generic lambda (C++17: these
// files do not need C++20, whatever standard the builder picks).
template <typename T> struct TypeTag { using type = T; };
template <int W, bool Exact> struct WidthTag {
  static constexpr int kW = W;
  static constexpr bool kExact = Exact;
};

// Calls f(TypeTag<X>{}) for the runtime dtype of x (fp32, fp16, bf16; fp64
// never reaches CUDA: checks.cpp refuses it).
template <typename F>
inline void dispatch_x(DType t, F&& f) {
  switch (t) {
    case DType::Float16: f(TypeTag<__half>{}); break;
    case DType::BFloat16: f(TypeTag<__nv_bfloat16>{}); break;
    default: f(TypeTag<float>{}); break;
  }
}

// Width buckets for kernels templated on the width: exact kernels for 2, 3
// and 4 (Mamba's 4, vLLM's 2..4), and kernels taking the width at run time
// up to 8, 16 and 32 (buckets above kMaxW are not instantiated; the caller
// routes such widths elsewhere). Calls f(WidthTag<kW, kExact>{}).
template <int kMaxW, typename F>
inline void dispatch_width(int64_t w, F&& f) {
  if (w == 2) return f(WidthTag<2, true>{});
  if (w == 3) return f(WidthTag<3, true>{});
  if (w == 4) return f(WidthTag<4, true>{});
  if constexpr (kMaxW <= 8) {
    return f(WidthTag<8, false>{});
  } else {
    if (w <= 8) return f(WidthTag<8, false>{});
    if constexpr (kMaxW <= 16) {
      return f(WidthTag<16, false>{});
    } else {
      if (w <= 16) return f(WidthTag<16, false>{});
      return f(WidthTag<32, false>{});
    }
  }
}

// The fast paths' widths 2, 3 and 4 only (the caller has checked w):
// calls f(WidthTag<w, true>{}).
template <typename F>
inline void dispatch_exact_width(int64_t w, F&& f) {
  if (w == 2) return f(WidthTag<2, true>{});
  if (w == 3) return f(WidthTag<3, true>{});
  return f(WidthTag<4, true>{});
}

// Every width 2..8 compiled exactly (the decode kernels': a loop bounded at
// run time costs them several times their bandwidth past width 4 too; the
// caller has checked w): calls f(WidthTag<w, true>{}).
template <typename F>
inline void dispatch_exact_width_2_to_8(int64_t w, F&& f) {
  switch (w) {
    case 2: return f(WidthTag<2, true>{});
    case 3: return f(WidthTag<3, true>{});
    case 4: return f(WidthTag<4, true>{});
    case 5: return f(WidthTag<5, true>{});
    case 6: return f(WidthTag<6, true>{});
    case 7: return f(WidthTag<7, true>{});
    default: return f(WidthTag<8, true>{});
  }
}

// f(std::bool_constant<a>{}, std::bool_constant<b>{}): a kernel's
// compile-time switches picked from runtime flags at launch.
template <typename F>
inline auto dispatch_flags(bool a, bool b, F&& f) {
  using T = std::true_type;
  using N = std::false_type;
  return a ? (b ? f(T{}, T{}) : f(T{}, N{})) : (b ? f(N{}, T{}) : f(N{}, N{}));
}

template <typename T> __device__ __forceinline__ T* ptr(const Strided& v) {
  return static_cast<T*>(v.data);
}

// weight[d, 0..kW-1] and bias[d] (0 without bias) as float, with one switch
// on their dtype for all of them. (Calling weight_at per tap converts each
// value inside its own branch of the switch, which waits for that load
// before the next one is issued.)
template <typename Wt, int kW>
__device__ __forceinline__ void load_taps_as(const ConvParams& p, int64_t d, float (&w)[kW],
                                             float& bias) {
  const Wt* wd = ptr<const Wt>(p.weight) + d * p.weight.s0;
#pragma unroll
  for (int k = 0; k < kW; ++k) w[k] = to_f(wd[k * p.weight.s1]);
  bias = p.bias.data ? to_f(ptr<const Wt>(p.bias)[d * p.bias.s0]) : 0.f;
}

template <int kW>
__device__ __forceinline__ void load_taps(const ConvParams& p, int64_t d, float (&w)[kW],
                                          float& bias) {
  switch (p.weight_dtype) {
    case DType::Float16: return load_taps_as<__half>(p, d, w, bias);
    case DType::BFloat16: return load_taps_as<__nv_bfloat16>(p, d, w, bias);
    default: return load_taps_as<float>(p, d, w, bias);
  }
}
}  // namespace causal_conv1d::cuda
