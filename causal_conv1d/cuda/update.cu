// Decode step (backend.h run_update) on CUDA. Two kernels:
//
//   fast     the usual decode step (Mamba, vLLM): one token, width 2..8 with
//            state_len W - 1 (both compile-time), a linear state (no
//            cache_seqlens) whose columns are contiguous, pooled or not. A
//            thread takes one channel of kRows batch rows: all loads first,
//            then the outputs, then the shifted states.
//   general  every other case (any L, W, S, strides, circular states): one
//            thread per (batch row, channel), loops bounded at run time.
//
// In both, channels are fastest across threads, so that a warp reads and
// writes neighbouring state rows, and the outputs come from the unchanged
// state before the state is written. No other thread touches a thread's
// state rows (distinct pool indices), so no synchronisation is needed. Pool
// indices and cache_seqlens live on the device and are never trusted: an
// index outside [0, N) is treated as padding (output 0, state untouched)
// and the circular write position is reduced into [0, S).
#include "launch.h"
#include "common.cuh"

namespace causal_conv1d::cuda {
namespace {

// ---------------------------------------------------------------------------
// fast: L == 1, W in 2..8, S == W - 1, no cache_seqlens, conv_state.s2 == 1
// (or S == 1)

// Batch rows per thread of the fast kernel. The thread reads its channel's
// weights and bias once for all of them, and has all their loads in flight
// together: one bf16 row alone is 8 bytes of state and token, too little to
// cover the memory latency at full occupancy.
constexpr int kRows = 4;

// A thread takes channel d of batch rows b0 .. b0 + kRows - 1 and works in
// three phases: every load (pool indices, tokens, state rows), then the
// outputs, then the stores. Loads and stores of a row never interleave, so
// no load waits for an earlier store to the same (possibly aliased) memory.
// I is the index type: int32_t when every offset and the work count fit
// (fewer and cheaper multiplies and divides), else int64_t.
template <typename X, int kW, typename I>
__global__ void __launch_bounds__(kThreads) update_fast_kernel(ConvParams p) {
  constexpr int kS = kW - 1;
  const I D = static_cast<I>(p.dim), B = static_cast<I>(p.batch), N = static_cast<I>(p.num_states);
  const I xs0 = static_cast<I>(p.x.s0), xs1 = static_cast<I>(p.x.s1);
  const I os0 = static_cast<I>(p.out.s0), os1 = static_cast<I>(p.out.s1);
  const I ss0 = static_cast<I>(p.conv_state.s0), ss1 = static_cast<I>(p.conv_state.s1);
  const I is0 = static_cast<I>(p.state_indices.s0);
  const int32_t* indices = ptr<const int32_t>(p.state_indices);
  const X* x = ptr<const X>(p.x);
  X* out = ptr<X>(p.out);
  X* state = ptr<X>(p.conv_state);
  const X zero = from_f<X>(0.f);
  const I total = (B + kRows - 1) / kRows * D;
  for (I i = static_cast<I>(global_thread()); i < total; i += static_cast<I>(grid_threads())) {
    const I d = i % D, b0 = i / D * kRows;

    bool live[kRows];  // the batch row exists and its pool index is in [0, N)
    I st[kRows];       // offset of its state row
    X hist[kRows][kS];
    X tok[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const I b = b0 + r;
      const bool in = b < B;
      const I row = !in ? I{-1} : indices ? static_cast<I>(indices[b * is0]) : b;
      live[r] = row >= 0 && row < N;
      st[r] = live[r] ? row * ss0 + d * ss1 : I{0};
      tok[r] = in ? x[b * xs0 + d * xs1] : zero;
#pragma unroll
      for (int j = 0; j < kS; ++j) hist[r][j] = live[r] ? state[st[r] + j] : zero;
    }
    float w[kW], bias;
    load_taps(p, d, w, bias);

#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const I b = b0 + r;
      if (b >= B) break;
      // the general kernel's order: bias, then taps 0..W-1 (the token last)
      float acc = bias;
#pragma unroll
      for (int k = 0; k < kS; ++k) acc += w[k] * to_f(hist[r][k]);
      acc += w[kS] * to_f(tok[r]);
      out[b * os0 + d * os1] = live[r] ? from_f<X>(p.silu ? silu_out<X>(acc) : acc) : zero;
    }

    // new state = old state[1:], then the token (copied, so bit-exact)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (!live[r]) continue;
#pragma unroll
      for (int j = 0; j + 1 < kS; ++j) state[st[r] + j] = hist[r][j + 1];
      state[st[r] + kS - 1] = tok[r];
    }
  }
}

bool fast_update_applies(const ConvParams& p) {
  return p.seqlen == 1 && p.width >= 2 && p.width <= 8 && p.state_len == p.width - 1 &&
         !p.cache_seqlens.given() && (p.conv_state.s2 == 1 || p.state_len == 1);
}

// Largest element offset of a view of sizes n0 x n1 x n2 (torch strides are
// never negative; an empty pool, n0 == 0, gives a negative bound and is
// never addressed).
int64_t max_offset(const Strided& v, int64_t n0, int64_t n1 = 1, int64_t n2 = 1) {
  return (n0 - 1) * v.s0 + (n1 - 1) * v.s1 + (n2 - 1) * v.s2;
}

// Whether the fast kernel may index with int32_t: every offset it forms
// fits, and so does i + grid_threads() in its loop (at most work - 1 plus
// grid_for's cap of 2^20 blocks).
bool fast_update_fits_int32(const ConvParams& p, int64_t work) {
  constexpr int64_t kMax = INT32_MAX;
  const int64_t B = p.batch, D = p.dim;
  const int64_t grid_cap = (int64_t{1} << 20) * kThreads;
  bool fits = work + grid_cap <= kMax && B + kRows <= kMax && p.num_states <= kMax &&
              max_offset(p.x, B, D) <= kMax && max_offset(p.out, B, D) <= kMax &&
              max_offset(p.conv_state, p.num_states, D, p.state_len) <= kMax;
  if (p.state_indices.given()) fits = fits && max_offset(p.state_indices, B) <= kMax;
  return fits;
}

// ---------------------------------------------------------------------------
// general

template <typename X>
__global__ void __launch_bounds__(kThreads) update_kernel(ConvParams p) {
  const int64_t D = p.dim, L = p.seqlen, W = p.width, S = p.state_len, N = p.num_states;
  const int64_t total = p.batch * D;
  const bool circular = p.cache_seqlens.data != nullptr;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t d = i % D, b = i / D;
    const X* xr = ptr<const X>(p.x) + b * p.x.s0 + d * p.x.s1;
    X* orow = ptr<X>(p.out) + b * p.out.s0 + d * p.out.s1;
    const int64_t row =
        p.state_indices.data != nullptr ? ptr<const int32_t>(p.state_indices)[b * p.state_indices.s0] : b;
    if (row < 0 || row >= N) {
      for (int64_t t = 0; t < L; ++t) orow[t * p.out.s2] = from_f<X>(0.f);
      continue;
    }
    X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d * p.conv_state.s1;
    const int64_t cs = circular ? ptr<const int32_t>(p.cache_seqlens)[b * p.cache_seqlens.s0] : 0;
    const int64_t oldest = S > 0 ? ((cs % S) + S) % S : 0;  // physical index of history(0)

    // stream(j) = history(j) for j < S, else x[j - S]; token t reads
    // stream(S - (W-1) + t + k) with tap k.
    const float bias = bias_at(p, d);
    for (int64_t t = 0; t < L; ++t) {
      float acc = bias;
      for (int64_t k = 0; k < W; ++k) {
        const int64_t j = S - (W - 1) + t + k;
        float v;
        if (j < S) {
          const int64_t phys = circular ? (oldest + j) % S : j;
          v = to_f(st[phys * p.conv_state.s2]);
        } else {
          v = to_f(xr[(j - S) * p.x.s2]);
        }
        acc += weight_at(p, d, k) * v;
      }
      orow[t * p.out.s2] = from_f<X>(p.silu ? silu_out<X>(acc) : acc);
    }

    if (S == 0) continue;
    if (circular) {
      // token t goes to (cache_seqlens + t) % S; later tokens win when L > S
      for (int64_t t = 0; t < L; ++t) st[((oldest + t) % S) * p.conv_state.s2] = xr[t * p.x.s2];
    } else {
      // shift left by L in place: ascending order reads each source before
      // it is overwritten (the source index j + L is always ahead)
      for (int64_t j = 0; j < S; ++j) {
        const int64_t src = j + L;
        st[j * p.conv_state.s2] = src < S ? st[src * p.conv_state.s2] : xr[(src - S) * p.x.s2];
      }
    }
  }
}

}  // namespace

void launch_update(const ConvParams& p, cudaStream_t stream) {
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    if (!fast_update_applies(p)) {
      launch(update_kernel<X>, grid_for(p.batch * p.dim), stream, p);
      return;
    }
    const int64_t work = (p.batch + kRows - 1) / kRows * p.dim;
    const bool narrow = fast_update_fits_int32(p, work);
    dispatch_exact_width_2_to_8(p.width, [&](auto wt) {
      constexpr int kW = decltype(wt)::kW;
      if (narrow) {
        launch(update_fast_kernel<X, kW, int32_t>, grid_for(work), stream, p);
      } else {
        launch(update_fast_kernel<X, kW, int64_t>, grid_for(work), stream, p);
      }
    });
  });
}

}  // namespace causal_conv1d::cuda
