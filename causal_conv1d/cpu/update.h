// Decode step (backend.h run_update) on CPU, and the channel-block engine
// that packed.h's prefill shares.
//
// Decode touches a few values per channel (S state columns, one token), so
// the work is spread over (block of channels, batch row) tasks and each
// block is computed with lanes = channels: the W-1 inputs before the next
// token of kLanes channels are gathered once into a transposed buffer, after
// which every token is W vector FMAs over that buffer, whatever the strides
// of x and conv_state. Only the gathers into the buffer and the state update
// look at the layout; the common contiguous (N, D, S) state shifts as one
// memmove per block.
#pragma once

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "common.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

// Calls f.template operator()<Wt>() for the runtime weight dtype. The
// engine converts weight and bias once per channel block, so only that
// conversion depends on Wt (fewer template instances than dispatch_dtypes).
template <typename F>
void dispatch_weight_dtype(DType w, F&& f) {
  switch (w) {
    case DType::Float32: return f.template operator()<float>();
    case DType::Float16: return f.template operator()<c10::Half>();
    case DType::BFloat16: return f.template operator()<c10::BFloat16>();
    case DType::Float64: return f.template operator()<double>();
  }
}

// ((a % m) + m) % m for a possibly negative a, m > 0.
inline int64_t wrap_index(int64_t a, int64_t m) {
  const int64_t r = a % m;
  return r < 0 ? r + m : r;
}

// Up to kLanes channels of one stream (one sequence or batch row), computed
// with one vector lane per channel. Typical use per block of channels:
// set_channels once, then per stream: load_window (or clear_window), run over
// its tokens, and write the state with shift_state.
template <typename X>
struct ChannelBlock {
  using A = acc_t<X>;
  using V = at::vec::Vectorized<A>;
  static constexpr int64_t N = V::size();
  static constexpr int64_t kLanes = 2 * N;  // channels per block: two vectors
  static constexpr int64_t kChunk = 32;     // tokens per pass through buf
  static constexpr bool kSameAsAcc = std::is_same_v<X, A>;

  int64_t width = 1;
  int64_t lanes = kLanes;  // live channels (the last block may have fewer)
  bool silu = false;
  // Weight transposed (tap k, lane); lanes past `lanes` are zero.
  alignas(64) A wt[kMaxWidthCpu][kLanes];
  alignas(64) A bias[kLanes];
  // Rows 0..W-2: the W-1 inputs before the current chunk, oldest first;
  // rows W-1..W-2+tc: the chunk's tokens. Token t's window is rows t..t+W-1.
  alignas(64) A buf[kMaxWidthCpu - 1 + kChunk][kLanes];
  alignas(64) A res[kChunk][kLanes];

  // Weight and bias of channels d0 .. d0+n-1.
  void set_channels(const ConvParams& p, int64_t d0, int64_t n) {
    width = p.width;
    lanes = n;
    silu = p.silu;
    dispatch_weight_dtype(p.weight_dtype, [&]<typename Wt>() {
      const Wt* w = ptr<Wt>(p.weight) + d0 * p.weight.s0;
      for (int64_t k = 0; k < width; ++k) {
        for (int64_t j = 0; j < n; ++j) wt[k][j] = A(w[j * p.weight.s0 + k * p.weight.s1]);
        std::fill(wt[k] + n, wt[k] + kLanes, A(0));
      }
      if (p.bias.given()) {
        const Wt* bi = ptr<Wt>(p.bias) + d0 * p.bias.s0;
        for (int64_t j = 0; j < n; ++j) bias[j] = A(bi[j * p.bias.s0]);
      } else {
        std::fill(bias, bias + n, A(0));
      }
      std::fill(bias + n, bias + kLanes, A(0));
    });
  }

  void clear_window() {
    for (int64_t k = 0; k + 1 < width; ++k) std::fill(buf[k], buf[k] + kLanes, A(0));
  }

  // Window row k (k < W-1) = column col[k] of each channel's state:
  // st[j * s_ch + col[k] * s_col] for lane j.
  void load_window(const X* st, int64_t s_ch, int64_t s_col, const int64_t* col) {
    for (int64_t k = 0; k + 1 < width; ++k) {
      const X* src = st + col[k] * s_col;
      A* row = buf[k];
      for (int64_t j = 0; j < lanes; ++j) row[j] = A(src[j * s_ch]);
      std::fill(row + lanes, row + kLanes, A(0));
    }
  }

  // Tokens t = 0..L-1 of x (lane j, token t at x[j * s_ch + t * s_tok]) into
  // out (same convention); afterwards the window holds the last W-1 inputs.
  void run(const X* x, int64_t xs_ch, int64_t xs_tok, int64_t L, X* out, int64_t os_ch,
           int64_t os_tok) {
    for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
      const int64_t tc = std::min(kChunk, L - t0);
      load_tokens(x + t0 * xs_tok, xs_ch, xs_tok, tc);
      convolve(tc);
      store_results(out + t0 * os_tok, os_ch, os_tok, tc);
      // the last W-1 rows become the window of the next chunk
      if (t0 + tc < L && width > 1)
        std::memmove(buf[0], buf[tc], sizeof(A) * kLanes * (width - 1));
    }
  }

 private:
  void load_tokens(const X* x, int64_t s_ch, int64_t s_tok, int64_t tc) {
    A(*rows)[kLanes] = buf + (width - 1);
    if (s_ch == 1) {  // channel-contiguous: one vector load per token
      for (int64_t t = 0; t < tc; ++t) load_lanes(x + t * s_tok, rows[t]);
      return;
    }
    for (int64_t j = 0; j < lanes; ++j) {
      const X* src = x + j * s_ch;
      for (int64_t t = 0; t < tc; ++t) rows[t][j] = A(src[t * s_tok]);
    }
    if (lanes < kLanes)
      for (int64_t t = 0; t < tc; ++t) std::fill(rows[t] + lanes, rows[t] + kLanes, A(0));
  }

  void convolve(int64_t tc) {
    for (int64_t t = 0; t < tc; ++t) {
      for (int64_t h = 0; h < kLanes; h += N) {
        V acc = V::loadu(bias + h);
        for (int64_t k = 0; k < width; ++k)
          acc = at::vec::fmadd(V::loadu(wt[k] + h), V::loadu(buf[t + k] + h), acc);
        if (silu) acc = acc / (V(A(1)) + exp_neg(acc));
        acc.store(res[t] + h);
      }
    }
  }

  static V exp_neg(const V& v) {
    if constexpr (std::is_same_v<A, float>) {
      return v.neg().exp_u20();  // ~20 ulp: far inside every fp32 tolerance
    } else {
      return v.neg().map([](A a) { return std::exp(a); });
    }
  }

  void store_results(X* out, int64_t s_ch, int64_t s_tok, int64_t tc) {
    if (s_ch == 1) {
      for (int64_t t = 0; t < tc; ++t) store_lanes(res[t], out + t * s_tok);
      return;
    }
    for (int64_t j = 0; j < lanes; ++j) {
      X* dst = out + j * s_ch;
      for (int64_t t = 0; t < tc; ++t) dst[t * s_tok] = X(res[t][j]);
    }
  }

  // `lanes` consecutive values of x's dtype <-> kLanes accumulators.
  void load_lanes(const X* src, A* dst) const {
    V a, b;
    if constexpr (kSameAsAcc) {
      if (lanes == kLanes) {
        a = V::loadu(src);
        b = V::loadu(src + N);
      } else {
        a = V::loadu(src, std::min(lanes, N));
        b = lanes > N ? V::loadu(src + N, lanes - N) : V(A(0));
      }
    } else {
      using XV = at::vec::Vectorized<X>;
      static_assert(XV::size() == kLanes);
      std::tie(a, b) = at::vec::convert_to_float<X>(lanes == kLanes ? XV::loadu(src)
                                                                    : XV::loadu(src, lanes));
    }
    a.store(dst);
    b.store(dst + N);
  }

  void store_lanes(const A* src, X* dst) const {
    const V a = V::loadu(src), b = V::loadu(src + N);
    if constexpr (kSameAsAcc) {
      if (lanes == kLanes) {
        a.store(dst);
        b.store(dst + N);
      } else {
        a.store(dst, std::min(lanes, N));
        if (lanes > N) b.store(dst + N, lanes - N);
      }
    } else {
      at::vec::convert_from_float<X>(a, b).store(dst, lanes);
    }
  }
};

// After a stream of L tokens, each of the n channels' S state columns
// (st[j * s_ch + i * s_col]) holds the last S inputs of (old state, tokens),
// oldest first; with keep_old false the old state counts as zeros. Values
// are copied, never converted, so the state stays bit-exact.
template <typename X>
void shift_state(X* st, int64_t s_ch, int64_t s_col, int64_t S, int64_t n, const X* x,
                 int64_t xs_ch, int64_t xs_tok, int64_t L, bool keep_old) {
  if (S == 0 || n == 0) return;
  const int64_t kept = std::max<int64_t>(S - L, 0);  // old columns that survive
  if (kept > 0) {
    if (!keep_old) {
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < kept; ++i) st[j * s_ch + i * s_col] = X(0);
    } else if (L > 0) {
      if (s_col == 1 && s_ch == S) {
        // the n channels are one contiguous run: shift it all left by L;
        // the columns this drags across channel boundaries are the ones
        // the new tokens overwrite below
        std::memmove(st, st + L, sizeof(X) * (n * S - L));
      } else {
        for (int64_t j = 0; j < n; ++j)
          for (int64_t i = 0; i < kept; ++i) st[j * s_ch + i * s_col] = st[j * s_ch + (i + L) * s_col];
      }
    }
  }
  const int64_t first = L - (S - kept);  // first token that lands in the state
  for (int64_t i = kept; i < S; ++i) {
    const X* src = x + (first + i - kept) * xs_tok;
    X* dst = st + i * s_col;
    for (int64_t j = 0; j < n; ++j) dst[j * s_ch] = src[j * xs_ch];
  }
}

// Tasks of about this many channel-token steps share a thread; below it a
// call stays on the calling thread (waking the pool costs more).
constexpr int64_t kTaskGrainSteps = 16384;

template <typename X>
void update_impl(const ConvParams& p) {
  using Block = ChannelBlock<X>;
  constexpr int64_t kLanes = Block::kLanes;
  const int64_t B = p.batch, D = p.dim, L = p.seqlen, W = p.width, S = p.state_len;
  const int64_t nblk = (D + kLanes - 1) / kLanes;
  const int32_t* indices = ptr<int32_t>(p.state_indices);
  const int32_t* seqlens = ptr<int32_t>(p.cache_seqlens);
  const int64_t grain = std::max<int64_t>(1, kTaskGrainSteps / (kLanes * (L + W + S)));

  // Tasks run block-major so a thread's consecutive tasks share weights.
  at::parallel_for(0, nblk * B, grain, [&](int64_t begin, int64_t end) {
    Block blk;
    int64_t loaded = -1;
    int64_t col[kMaxWidthCpu];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / B, b = task % B;
      const int64_t d0 = c * kLanes, n = std::min(kLanes, D - d0);
      const X* x = ptr<X>(p.x) + b * p.x.s0 + d0 * p.x.s1;
      X* out = ptr<X>(p.out) + b * p.out.s0 + d0 * p.out.s1;
      const int64_t row = indices ? indices[b * p.state_indices.s0] : b;
      if (row < 0) {  // padding row: output 0, state untouched
        for (int64_t j = 0; j < n; ++j)
          for (int64_t t = 0; t < L; ++t) out[j * p.out.s1 + t * p.out.s2] = X(0);
        continue;
      }
      if (c != loaded) {
        blk.set_channels(p, d0, n);
        loaded = c;
      }
      X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d0 * p.conv_state.s1;
      const int64_t s_ch = p.conv_state.s1, s_col = p.conv_state.s2;
      if (seqlens) {
        // circular buffer: the next write goes to column seqlens[b] % S and
        // the W-1 columns before it (circularly) are the window
        const int64_t next = seqlens[b * p.cache_seqlens.s0];
        for (int64_t k = 0; k + 1 < W; ++k) col[k] = wrap_index(next - (W - 1) + k, S);
        blk.load_window(st, s_ch, s_col, col);
        blk.run(x, p.x.s1, p.x.s2, L, out, p.out.s1, p.out.s2);
        for (int64_t i = std::max<int64_t>(L - S, 0); i < L; ++i) {  // later tokens win
          X* dst = st + wrap_index(next + i, S) * s_col;
          const X* src = x + i * p.x.s2;
          for (int64_t j = 0; j < n; ++j) dst[j * s_ch] = src[j * p.x.s1];
        }
      } else {
        for (int64_t k = 0; k + 1 < W; ++k) col[k] = S - (W - 1) + k;
        blk.load_window(st, s_ch, s_col, col);
        blk.run(x, p.x.s1, p.x.s2, L, out, p.out.s1, p.out.s2);
        shift_state(st, s_ch, s_col, S, n, x, p.x.s1, p.x.s2, L, /*keep_old=*/true);
      }
    }
  });
}

inline void update(const ConvParams& p) {
  switch (p.x_dtype) {
    case DType::Float32: return update_impl<float>(p);
    case DType::Float16: return update_impl<c10::Half>(p);
    case DType::BFloat16: return update_impl<c10::BFloat16>(p);
    case DType::Float64: return update_impl<double>(p);
  }
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
