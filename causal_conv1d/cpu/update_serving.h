// The serving engines' decode step (backend.h run_update_serving) on CPU.
//
// What each sequence reads and writes comes from serving.h's plan_sequence,
// shared with the CUDA kernel. Work is split into (sequence, block of
// kBlock channels) tasks. A task widens its window columns and tokens once
// into rows of kBlock accumulators, so the arithmetic is whole vectors
// across channels whatever the strides (a token tree only changes which rows
// a token reads), then copies its state row as X values, untouched by
// arithmetic. Only the row moves (VecIO's load_row / store_row, copy_row)
// look at the layout.
//
// vLLM's layout, x, out and the state's columns with stride 1 along D,
// needs no staging: ChannelServing runs its tasks (without a token tree,
// windows or block states) from memory to registers and back.
//
// The default layout, the state (N, D, S) contiguous (SGLang's and
// TensorRT-LLM's pools too), keeps each channel's columns in a short run, as
// x (B, D, L) contiguous does its tokens, and the intermediate windows
// (rows, L, D, W - 1) each token's window: a row of channels is then a
// strided gather, element by element. On AVX-512 and AVX2 such tasks, with
// runs of up to a register (16 values on AVX-512, 8 on AVX2), go through
// RegisterServing instead, token trees and windows included, which loads
// the runs of a block of channels as whole registers and turns them into
// columns (and back) with decode_regs.h's permutes; for fp16/bf16 on
// AVX-512 at W = 4 with an odd number of drafts, PairServing
// (serving_pairs.h) permutes pairs of columns instead.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../serving.h"
#include "common.h"
#include "decode_regs.h"
#include "serving_pairs.h"
#include "update.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {
namespace serving {

template <typename X>
struct Rows {
  using A = acc_t<X>;
  using V = Vec<A>;
  static constexpr int64_t N = kLanes<A>;
  // Channels per task: whole vectors on every tier (4 to 16 lanes).
  static constexpr int64_t kBlock = 64;

  // dst[d * dst_stride] = src[d * src_stride] for d < n, as X.
  static void copy_row(const X* src, int64_t src_stride, int64_t n, X* dst, int64_t dst_stride) {
    if (src_stride == 1 && dst_stride == 1) {
      std::copy(src, src + n, dst);  // dst is never inside [src, src + n)
    } else {
      for (int64_t d = 0; d < n; ++d) dst[d * dst_stride] = src[d * src_stride];
    }
  }
};

// One task of run() when x, out and the state's columns are rows of
// channels (stride 1 between channels: vLLM's layout) and each token follows
// the one before it (no token tree, no windows, no block states): straight
// from memory to registers and back, 2N channels at a time, the taps loaded
// once for all the tokens and the window slid along them. Nothing is staged,
// which in this layout is most of what run_tasks' rows cost. The arithmetic
// is run_tasks', in its order; the state moves as raw values.
template <typename X>
struct ChannelServing {
  using IO = VecIO<X>;
  using A = acc_t<X>;
  using V = Vec<A>;
  static constexpr int64_t N = kLanes<A>;
  static_assert(Rows<X>::kBlock % (2 * N) == 0);

  static bool applies(const ConvParams& p) {
    return p.x.s1 == 1 && p.out.s1 == 1 && p.conv_state.s1 == 1 && !p.windows.given() &&
           !p.parents.given() && p.block_size == 0;
  }

  // Channels [d0, d0 + Rows<X>::kBlock) of sequence b (s.len >= 1, s.read_row >= 0).
  static void task(const ConvParams& p, int64_t b, const SeqPlan& s, int64_t d0,
                   const TapRows<A>& taps) {
    dispatch_width(p.width, [&]<int kW>() { task_w<kW>(p, b, s, d0, taps); });
  }

  // kW: the width as a constant (the window then stays in registers), or 0.
  template <int kW>
  static void task_w(const ConvParams& p, int64_t b, const SeqPlan& s, int64_t d0,
                     const TapRows<A>& taps) {
    constexpr int64_t RK = kW > 0 ? kW : kMaxWidthCpu;
    const int64_t W = kW > 0 ? kW : p.width;
    const int64_t xs = p.x.s2, os = p.out.s2, sc = p.conv_state.s2;
    const X* x = ptr<const X>(p.x) + b * p.x.s0 + d0 + s.first * xs;
    X* out = ptr<X>(p.out) + b * p.out.s0 + d0 + s.first * os;
    X* pool = ptr<X>(p.conv_state) + d0;
    const X* read = pool + s.read_row * p.conv_state.s0;
    const int64_t first_col = s.hist_len - (W - 1);
    for (int64_t d = 0; d < Rows<X>::kBlock; d += 2 * N) {
      VecArray<V, RK> tap0, tap1, h0, h1;  // h[k]: tap k's input for the next token
      for (int64_t k = 0; k < W; ++k) {
        tap0[k] = V::loadu(taps.tap(k, d0) + d);
        tap1[k] = V::loadu(taps.tap(k, d0) + d + N);
      }
      const V bias0 = V::loadu(taps.bias(d0) + d), bias1 = V::loadu(taps.bias(d0) + d + N);
      for (int64_t c = 0; c + 1 < W; ++c) {
        if (s.zero_history) {
          h0[c] = h1[c] = V(A(0));
        } else {
          IO::load2(read + (first_col + c) * sc + d, h0[c], h1[c]);
        }
      }
      for (int64_t j = 0; j < s.len; ++j) {
        IO::load2(x + j * xs + d, h0[W - 1], h1[W - 1]);
        V a0 = bias0, a1 = bias1;
        for (int64_t k = 0; k < W; ++k) {
          a0 = at::vec::fmadd(tap0[k], h0[k], a0);
          a1 = at::vec::fmadd(tap1[k], h1[k], a1);
        }
        if (p.silu) {
          a0 = silu_vec<X>(a0);
          a1 = silu_vec<X>(a1);
        }
        IO::store2(out + j * os + d, a0, a1);
        for (int64_t k = 0; k + 1 < W; ++k) {
          h0[k] = h0[k + 1];
          h1[k] = h1[k + 1];
        }
      }
      // New column c = stream column shift + c: a history column (or zero)
      // or a token. In place, column c reads column shift + c >= c, which
      // no earlier copy of these channels has overwritten (memmove: the
      // two are the same columns when shift is 0).
      if (s.write_row < 0) continue;
      X* write = pool + s.write_row * p.conv_state.s0 + d;
      for (int64_t c = 0; c < s.count; ++c) {
        const int64_t src = s.shift + c;
        X* dst = write + c * sc;
        if (src >= s.hist_len) {
          std::memcpy(dst, x + (src - s.hist_len) * xs + d, sizeof(X) * 2 * N);
        } else if (s.zero_history) {
          std::fill(dst, dst + 2 * N, X(0));
        } else {
          std::memmove(dst, read + src * sc + d, sizeof(X) * 2 * N);
        }
      }
    }
  }
};

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// One task of run() when the state holds per-channel runs of S columns (the
// default layout, SGLang's pool) and x and out hold either per-channel runs
// of L tokens (x (B, D, L) contiguous) or rows of channels (a (B * L, D)
// projection viewed as (B, D, L), packed (T, D)): 2R channels at a time,
// runs loaded as registers and turned into the stream's columns (Runs),
// each widened once into a row. A token tree only changes which rows a
// token reads; its intermediate windows, per-channel runs of W - 1, are
// spread from the stream's columns. The outputs go back into runs or rows,
// and the new state is either spread from its columns or, in the constant
// shapes of a chain, permuted straight from the old state's and x's runs
// (restride). Values the state and the windows keep are permuted, never
// converted, so they stay bit-exact; the arithmetic is run()'s, in its
// order.
template <typename X>
struct RegisterServing {
  using Rg = Regs<X>;
  using R = typename Rg::R;
  using V = at::vec::Vectorized<float>;
  static constexpr int64_t kR = Rg::kLanes;
  static constexpr int64_t kMaxRun = Runs<X>::kMaxRun;
  // Tokens a sequence: runs hold up to kMaxRun, rows of channels (only the
  // stack's arrays bound them) this many, enough for engines' token trees.
  static constexpr int64_t kMaxTokens = 64;

  const ConvParams& p;
  Runs<X> state_runs, token_runs, window_runs;
  // The constant shapes write the new state without going through
  // columns (restride): register m is the old one moved `shift` values on
  // (columns < W - 2, the kept history) with the tokens permuted in from
  // x's runs registers token_reg[m] and token_reg[m] + 1 (columns >= W - 2,
  // the lanes of token_mask[m]).
  typename Rg::Idx token_index[kMaxRun];
  typename Rg::Mask token_mask[kMaxRun];
  int64_t token_reg[kMaxRun] = {};

  // x or out as per-channel runs of the call's L tokens (never packed).
  static bool token_runs_fit(const ConvParams& p, const Strided& t) {
    return p.query_start_loc.data == nullptr && p.seqlen <= kMaxRun && in_runs(t, p.seqlen);
  }
  static bool tokens_fit(const ConvParams& p, const Strided& t) {
    return t.s1 == 1 || token_runs_fit(p, t);
  }
  // No windows, or windows whose W - 1 values per channel are a run.
  static bool windows_fit(const ConvParams& p) {
    const Strided4& w = p.windows;
    const int64_t n = p.width - 1;
    return !w.given() || n == 0 || (n <= kMaxRun && w.s2 == n && (n == 1 || w.s3 == 1));
  }

  // The call's conditions; a task also needs a whole block of channels, at
  // most kMaxTokens tokens and either a write to its read row, a
  // write of every column or no state write (windows instead).
  static bool applies(const ConvParams& p) {
    const int64_t S = p.state_len;
    return S >= 1 && S <= kMaxRun && in_runs(p.conv_state, S) && tokens_fit(p, p.x) &&
           tokens_fit(p, p.out) && windows_fit(p) && p.block_size == 0;
  }
  static bool takes(const ConvParams& p, const SeqPlan& s) {
    return s.len <= kMaxTokens && s.read_row >= 0 &&
           (s.count == 0 || s.write_row == s.read_row || s.count == p.state_len);
  }

  // Each token follows the one before it, L tokens a sequence (no token
  // tree, no windows, not packed): the constant shapes.
  static bool chain(const ConvParams& p) {
    return !p.parents.given() && !p.windows.given() && p.query_start_loc.data == nullptr;
  }
  // A chain with x and out in runs: PairServing's inputs.
  static bool chain_of_runs(const ConvParams& p) {
    return chain(p) && token_runs_fit(p, p.x) && token_runs_fit(p, p.out);
  }

  // W, S and L as constants keep the columns in registers and unroll the
  // permutes, for the shapes engines use most: W = 4 (the Mamba2 family)
  // decoding one token or verifying 1 to 7 drafts (5 on AVX2, whose
  // registers hold runs of 8), S = W - 2 + L.
  static constexpr int64_t kMaxConstantL = std::min<int64_t>(8, kMaxRun - 2);
  static bool constant_shape(const ConvParams& p) {
    return p.width == 4 && p.state_len == p.seqlen + 2 && p.seqlen <= kMaxConstantL && chain(p);
  }

  explicit RegisterServing(const ConvParams& params)
      : p(params),
        state_runs(params.state_len),
        token_runs(std::min(params.seqlen, kMaxRun)),  // unused past kMaxRun (rows)
        window_runs(params.windows.given() ? params.width - 1 : 0) {
    if (!constant_shape(p)) return;
    const int64_t S = p.state_len, L = p.seqlen, keep = p.width - 2;
    alignas(64) int32_t idx[kR];
    for (int64_t m = 0; m < S; ++m) {
      // The tokens of the channels register m touches, from the x register
      // holding the first of them.
      token_reg[m] = (kR * m / S) * L / kR;
      uint32_t bits = 0;
      for (int64_t e = 0; e < kR; ++e) {
        const int64_t q = kR * m + e, c = q % S;
        idx[e] = 0;
        if (c < keep) continue;
        const int64_t at = (q / S) * L + c - keep - token_reg[m] * kR;
        // A register spans at most R / S + 1 channels: in every constant
        // shape their tokens fit in the two registers one permute reads.
        TORCH_INTERNAL_ASSERT(at < 2 * kR);
        idx[e] = static_cast<int32_t>(at);
        bits |= 1u << e;
      }
      token_index[m] = Rg::index(idx);
      token_mask[m] = Rg::mask(bits);
    }
  }

  // Channels [d0, d0 + n) of sequence b, n a multiple of 2R.
  void task(int64_t b, const SeqPlan& s, int64_t d0, int64_t n, const TapRows<float>& taps) const {
    if (constant_shape(p)) {
      if (token_runs_fit(p, p.x) && token_runs_fit(p, p.out)) {
        if (constant_task<true>(b, s, d0, n, taps)) return;
      } else if (constant_task<false>(b, s, d0, n, taps)) {
        return;
      }
    }
    // SGLang's and TensorRT-LLM's verify step: W = 4, the state the window
    // (S = W - 1), the windows written, any number of tokens.
    if (p.width == 4 && p.state_len == 3) return task_n<4, 3, 0, false>(b, s, d0, n, taps);
    return task_n<0, 0, 0, false>(b, s, d0, n, taps);
  }

  // The constant shapes (false: past the tier's longest, kMaxConstantL).
  template <bool kRestride>
  bool constant_task(int64_t b, const SeqPlan& s, int64_t d0, int64_t n,
                     const TapRows<float>& taps) const {
    auto run = [&]<int kL>() {
      if constexpr (kL <= kMaxConstantL) task_n<4, kL + 2, kL, kRestride>(b, s, d0, n, taps);
      return kL <= kMaxConstantL;
    };
    switch (p.seqlen) {
      case 1: return run.template operator()<1>();
      case 2: return run.template operator()<2>();
      case 3: return run.template operator()<3>();
      case 4: return run.template operator()<4>();
      case 5: return run.template operator()<5>();
      case 6: return run.template operator()<6>();
      case 7: return run.template operator()<7>();
      case 8: return run.template operator()<8>();
      default: return false;
    }
  }

  // kW, kS, kL: W, S and L as constants, or 0: known at run time. With kL
  // a constant the shape is a chain with S = W - 2 + L; kRestride: x and
  // out in runs, the new state permuted from the old one and x's runs. The
  // arrays take the constants' exact sizes, else the longest runs (and
  // kMaxTokens tokens).
  template <int kW, int kS, int kL, bool kRestride>
  void task_n(int64_t b, const SeqPlan& s, int64_t d0, int64_t n,
              const TapRows<float>& taps) const {
    constexpr bool kChain = kL > 0;
    static_assert(!kChain || kS == kW - 2 + kL);
    static_assert(kChain || !kRestride);
    constexpr int64_t kSA = kS ? kS : kMaxRun, kLA = kL ? kL : kMaxTokens;
    constexpr int64_t kRunA = kL ? kL : kMaxRun;  // x's runs
    constexpr int64_t kWA = kW ? kW : kMaxRun + 2;  // W - 1 <= S
    const int64_t W = kW ? kW : p.width, S = kS ? kS : p.state_len, L = kL ? kL : s.len;
    // Stream rows: 0..W-2 the window (state columns first_col...), W-1+t
    // token t. Token j's tap k reads row j + k, or along a token tree
    // tap_row[j][k] (its ancestors).
    const int64_t first_col = s.hist_len - (W - 1);
    int32_t tap_row[kLA][kWA];
    if constexpr (!kChain) {
      for (int64_t j = 0; j < L; ++j) {
        int64_t walk = j;
        for (int64_t i = 0; i < W; ++i) {
          const int64_t src = step_back(p, b, s, i, &walk);
          const int64_t row = src >= 0 ? W - 1 + src : -1 - src - first_col;
          tap_row[j][W - 1 - i] = static_cast<int32_t>(row);
        }
      }
    }
    auto row_of = [&](int64_t j, int64_t k) -> int64_t { return kChain ? j + k : tap_row[j][k]; };
    typename Rg::Idx shift_index{};  // lane e: value e + shift of two registers
    if constexpr (kRestride) {
      alignas(64) int32_t idx[kR];
      for (int64_t e = 0; e < kR; ++e) idx[e] = static_cast<int32_t>(e + s.shift);
      shift_index = Rg::index(idx);
    }
    // Rows of channels, or runs of the call's L tokens per channel.
    const bool x_rows = !kRestride && p.x.s1 == 1, out_rows = !kRestride && p.out.s1 == 1;
    const X* x = ptr<const X>(p.x) + b * p.x.s0 + s.first * p.x.s2;
    X* out = ptr<X>(p.out) + b * p.out.s0 + s.first * p.out.s2;
    X* pool = ptr<X>(p.conv_state);
    const X* read = pool + s.read_row * p.conv_state.s0;
    X* write = pool + s.write_row * p.conv_state.s0;
    X* windows = s.window_row >= 0 && W > 1
                     ? static_cast<X*>(p.windows.data) + s.window_row * p.windows.s0
                     : nullptr;
    for (int64_t d = d0; d < d0 + n; d += 2 * kR) {
      R st[2][kSA], tok[2][kRunA], stream[2][kWA - 1 + kLA];
      VecArray<V, kWA - 1 + kLA> rows[2];
      for (int h = 0; h < 2; ++h) {
        const int64_t dh = d + h * kR;
        for (int64_t m = 0; m < S; ++m) st[h][m] = Rg::load(read + dh * S + m * kR);
        for (int64_t c = 0; c + 1 < W; ++c) {
          stream[h][c] = s.zero_history ? Rg::zero()
                                        : state_runs.template column<kS>(st[h], first_col + c);
        }
        if (x_rows) {
          for (int64_t t = 0; t < L; ++t) stream[h][W - 1 + t] = Rg::load(x + t * p.x.s2 + dh);
        } else {
          for (int64_t m = 0; m < L; ++m) tok[h][m] = Rg::load(x + dh * L + m * kR);
          for (int64_t t = 0; t < L; ++t)
            stream[h][W - 1 + t] = token_runs.template column<kL>(tok[h], t);
        }
        for (int64_t i = 0; i < W - 1 + L; ++i) rows[h][i] = V(Rg::widen(stream[h][i]));
      }
      R res[2][kLA];
      for (int64_t j = 0; j < L; ++j) {
        V a0 = V::loadu(taps.bias(d)), a1 = V::loadu(taps.bias(d + kR));
        for (int64_t k = 0; k < W; ++k) {
          const int64_t r = row_of(j, k);
          a0 = at::vec::fmadd(V::loadu(taps.tap(k, d)), rows[0][r], a0);
          a1 = at::vec::fmadd(V::loadu(taps.tap(k, d + kR)), rows[1][r], a1);
        }
        if (p.silu) {
          a0 = silu_vec<X>(a0);
          a1 = silu_vec<X>(a1);
        }
        Rg::narrow2(a0, a1, res[0][j], res[1][j]);
      }
      for (int h = 0; h < 2; ++h) {
        const int64_t dh = d + h * kR;
        if (out_rows) {
          for (int64_t j = 0; j < L; ++j) Rg::store(out + j * p.out.s2 + dh, res[h][j]);
        } else {
          for (int64_t m = 0; m < L; ++m)
            Rg::store(out + dh * L + m * kR, token_runs.template spread<kL>(res[h], m));
        }
        if constexpr (kRestride) {
          for (int64_t m = 0; m < kS; ++m) {
            const R next = st[h][std::min<int64_t>(m + 1, kS - 1)];
            const R kept =
                s.zero_history ? Rg::zero() : Rg::permute2(st[h][m], shift_index, next);
            const int64_t g = token_reg[m], g1 = std::min<int64_t>(g + 1, kL - 1);
            const R tokens = Rg::permute2(tok[h][g], token_index[m], tok[h][g1]);
            Rg::store(write + dh * S + m * kR, Rg::blend(token_mask[m], kept, tokens));
          }
          continue;
        }
        if (windows != nullptr) {  // token j's inputs from tap 1 on, oldest first
          for (int64_t j = 0; j < L; ++j) {
            R cols[kWA - 1];
            for (int64_t c = 0; c + 1 < W; ++c) cols[c] = stream[h][row_of(j, c + 1)];
            X* win = windows + j * p.windows.s1 + dh * (W - 1);
            for (int64_t m = 0; m + 1 < W; ++m)
              Rg::store(win + m * kR, window_runs.template spread<kW ? kW - 1 : 0>(cols, m));
          }
        }
        if (s.count == 0) continue;
        // New column c = stream column shift + c (c < count), else the old one.
        R cols[kSA];
        for (int64_t c = 0; c < S; ++c) {
          const int64_t src = c < s.count ? s.shift + c : c;
          if (c < s.count && src >= first_col) {
            cols[c] = stream[h][src - first_col];
          } else {
            cols[c] = c < s.count && s.zero_history ? Rg::zero()
                                                    : state_runs.template column<kS>(st[h], src);
          }
        }
        for (int64_t m = 0; m < S; ++m)
          Rg::store(write + dh * S + m * kR, state_runs.template spread<kS>(cols, m));
      }
    }
  }
};
#endif

// Tasks ahead whose memory run_tasks asks for: kPrefetchChannels on, or
// none. In a model a layer's states are evicted between two of its steps
// (x was just written by its projection), and where a channel's columns
// are a short run (the default layout) asking ahead saves more than it
// costs whatever the call's size. Where the columns are rows of channels
// (vLLM's layout) the hardware prefetchers follow them, and asking ahead
// costs more than it saves until the bytes (x, out and the state rows
// used) pass kPrefetchMinBytes, where calls back to back stopped finding
// them in a 32 MiB L3. (Unlike the upstream update's loops, a speculative
// step lost time when it asked for its state rows alone, in groups.)
constexpr int64_t kPrefetchMinBytes = int64_t(24) << 20;
template <typename X>
int64_t serving_prefetch_tasks(const ConvParams& p, int64_t lanes) {
  const int64_t values = p.batch * p.dim * (2 * p.seqlen + p.state_len);
  const bool channel_rows = p.conv_state.s1 == 1;
  if (channel_rows && values * static_cast<int64_t>(sizeof(X)) < kPrefetchMinBytes) return 0;
  return prefetch_group(lanes);
}

// Asks for the memory task `task` of run_tasks reads and writes: x, out
// and its state rows, a few tasks ahead (see prefetch_update_states).
template <typename X>
void prefetch_task(const ConvParams& p, int64_t task, int64_t blocks) {
  constexpr int64_t K = Rows<X>::kBlock;
  const int64_t b = task / blocks, d0 = (task % blocks) * K, nd = std::min(K, p.dim - d0);
  const SeqPlan s = plan_sequence(p, b);
  if (s.len == 0) return;
  const Strided &x = p.x, &out = p.out, &st = p.conv_state;
  prefetch_block(ptr<const X>(x) + b * x.s0 + d0 * x.s1 + s.first * x.s2, nd, x.s1, s.len, x.s2,
                 false);
  prefetch_block(ptr<X>(out) + b * out.s0 + d0 * out.s1 + s.first * out.s2, nd, out.s1, s.len,
                 out.s2, true);
  const X* pool = ptr<X>(st) + d0 * st.s1;
  if (s.read_row >= 0)
    prefetch_block(pool + s.read_row * st.s0, nd, st.s1, p.state_len, st.s2,
                   s.write_row == s.read_row);
  if (s.write_row >= 0 && s.write_row != s.read_row)
    prefetch_block(pool + s.write_row * st.s0, nd, st.s1, p.state_len, st.s2, true);
}

// fast(b, s, d0, taps) runs a whole block of channels another way, or
// returns false.
template <typename X, typename Fast>
void run_tasks(const ConvParams& p, Fast&& fast) {
  using R = Rows<X>;
  using IO = VecIO<X>;
  using A = typename R::A;
  using V = typename R::V;
  constexpr int64_t N = R::N, K = R::kBlock;
  const int64_t B = p.batch, D = p.dim, W = p.width;
  const int64_t blocks = (D + K - 1) / K;
  // Enough tasks per thread chunk to amortize the tap transpose.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / (K * (p.seqlen + W)));
  at::parallel_for(0, B * blocks, grain, [&](int64_t begin, int64_t end) {
    // The channel blocks this chunk of tasks visits (all, once it wraps).
    int64_t c_lo = begin % blocks, c_hi = (end - 1) % blocks + 1;
    if (end - begin >= blocks || c_hi <= c_lo) c_lo = 0, c_hi = blocks;
    const TapRows<A> taps = transpose_taps<A>(p, K, c_lo, c_hi);
    // The task's stream as rows of K accumulators: rows 0..W-2 the window,
    // row W-1+t token t; each input is widened once, whatever its layout.
    thread_local std::vector<A> stream_rows;
    alignas(64) A acc[K];
    const int64_t ahead = serving_prefetch_tasks<X>(p, K);
    for (int64_t task = begin; task < end; ++task) {
      if (ahead > 0 && task + ahead < end) prefetch_task<X>(p, task + ahead, blocks);
      const int64_t b = task / blocks, d0 = (task % blocks) * K, nd = std::min(K, D - d0);
      const SeqPlan s = plan_sequence(p, b);
      if (s.len == 0) continue;
      const X* x = ptr<const X>(p.x) + b * p.x.s0 + d0 * p.x.s1 + s.first * p.x.s2;
      X* out = ptr<X>(p.out) + b * p.out.s0 + d0 * p.out.s1 + s.first * p.out.s2;
      if (s.read_row < 0) {
        std::fill(acc, acc + K, A(0));
        for (int64_t j = 0; j < s.len; ++j) IO::store_row(acc, out + j * p.out.s2, p.out.s1, nd);
        continue;
      }
      if (nd == K && fast(b, s, d0, taps)) continue;
      const size_t need = static_cast<size_t>((W - 1 + s.len) * K);
      if (stream_rows.size() < need) stream_rows.resize(need);
      A* rows = stream_rows.data();
      X* state = ptr<X>(p.conv_state) + d0 * p.conv_state.s1;
      const X* read = state + s.read_row * p.conv_state.s0;
      const int64_t first_col = s.hist_len - (W - 1);
      for (int64_t c = 0; c < W - 1; ++c) {
        if (s.zero_history) {
          std::fill(rows + c * K, rows + (c + 1) * K, A(0));
        } else {
          IO::load_row(read + (first_col + c) * p.conv_state.s2, p.conv_state.s1, rows + c * K, nd);
        }
      }
      for (int64_t t = 0; t < s.len; ++t)
        IO::load_row(x + t * p.x.s2, p.x.s1, rows + (W - 1 + t) * K, nd);
      for (int64_t j = 0; j < s.len; ++j) {
        // Token j's input rows, tap 0 (the oldest) first: the order of the
        // plain update, so both round alike.
        const A* in[kMaxWidthCpu];
        int64_t walk = j;
        for (int64_t i = 0; i < W; ++i) {
          const int64_t src = step_back(p, b, s, i, &walk);
          in[W - 1 - i] = rows + (src >= 0 ? W - 1 + src : -1 - src - first_col) * K;
        }
        for (int64_t d = 0; d < K; d += N) {
          V a = V::loadu(taps.bias(d0 + d));
          for (int64_t k = 0; k < W; ++k)
            a = at::vec::fmadd(V::loadu(taps.tap(k, d0) + d), V::loadu(in[k] + d), a);
          if (p.silu) a = silu_vec<X>(a);
          a.store(acc + d);
        }
        IO::store_row(acc, out + j * p.out.s2, p.out.s1, nd);
        if (s.window_row >= 0) {
          X* win = static_cast<X*>(p.windows.data) + s.window_row * p.windows.s0 +
                   j * p.windows.s1 + d0 * p.windows.s2;
          for (int64_t c = 0; c < W - 1; ++c)
            IO::store_row(in[c + 1], win + c * p.windows.s3, p.windows.s2, nd);
        }
      }
      // Written rows receive stream columns [from, from + count) as X
      // values: history columns (or zeros) then tokens. In place, column c
      // reads column from + c > c, which no earlier copy has overwritten
      // (ascending c within a channel, or whole columns in ascending order).
      const int64_t ss = p.conv_state.s1, sc = p.conv_state.s2;
      auto write_stream = [&](int64_t row, int64_t from, int64_t count) {
        X* write = state + row * p.conv_state.s0;
        const int64_t from_hist = std::clamp<int64_t>(s.hist_len - from, 0, count);
        const int64_t first_token = from + from_hist - s.hist_len;
        if (sc <= ss) {  // a channel's columns are nearest: channel by channel
          for (int64_t d = 0; d < nd; ++d) {
            const X* h = read + d * ss + from * sc;
            const X* t = x + d * p.x.s1 + first_token * p.x.s2;
            X* w = write + d * ss;
            for (int64_t c = 0; c < from_hist; ++c) w[c * sc] = s.zero_history ? X(0) : h[c * sc];
            for (int64_t c = from_hist; c < count; ++c) w[c * sc] = t[(c - from_hist) * p.x.s2];
          }
        } else {  // a column's channels are nearest: column by column
          for (int64_t c = 0; c < count; ++c) {
            X* w = write + c * sc;
            if (c >= from_hist) {
              R::copy_row(x + (first_token + c - from_hist) * p.x.s2, p.x.s1, nd, w, ss);
            } else if (s.zero_history) {
              for (int64_t d = 0; d < nd; ++d) w[d * ss] = X(0);
            } else {
              R::copy_row(read + (from + c) * sc, ss, nd, w, ss);
            }
          }
        }
      };
      // The block states, then the final state. Written rows are distinct,
      // so at most one of them is the read row: it goes last, once every
      // other write has read the history.
      const int64_t S = p.state_len;
      for (int pass = 0; pass < 2; ++pass) {
        auto in_pass = [&](int64_t row) { return row >= 0 && (row == s.read_row) == (pass == 1); };
        for (int64_t k = 0; k < s.boundaries; ++k) {
          const int64_t row = block_state_row(p, b, s, k);
          if (in_pass(row)) write_stream(row, s.hist_len + s.first_boundary + k * p.block_size - S, S);
        }
        if (s.count > 0 && in_pass(s.write_row)) write_stream(s.write_row, s.shift, s.count);
      }
    }
  });
}

template <typename X>
void run(const ConvParams& p) {
  using Taps = TapRows<acc_t<X>>;
  if (ChannelServing<X>::applies(p)) {
    run_tasks<X>(p, [&](int64_t b, const SeqPlan& s, int64_t d0, const Taps& taps) {
      ChannelServing<X>::task(p, b, s, d0, taps);
      return true;
    });
    return;
  }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (!std::is_same_v<X, double>) {
    if (RegisterServing<X>::applies(p)) {
      // A register path (RegisterServing or PairServing) for the sequences
      // it takes, run_tasks' rows for the others.
      auto run_registers = [&](const auto& path) {
        run_tasks<X>(p, [&](int64_t b, const SeqPlan& s, int64_t d0, const Taps& taps) {
          if (!RegisterServing<X>::takes(p, s)) return false;
          path.task(b, s, d0, Rows<X>::kBlock, taps);
          return true;
        });
      };
#if defined(CPU_CAPABILITY_AVX512)
      if constexpr (sizeof(X) == 2) {
        if (RegisterServing<X>::chain_of_runs(p) && PairServing<X>::applies(p))
          return run_registers(PairServing<X>(p));
      }
#endif
      return run_registers(RegisterServing<X>(p));
    }
  }
#endif
  run_tasks<X>(p, [](int64_t, const SeqPlan&, int64_t, const Taps&) { return false; });
}

}  // namespace serving

inline void update_serving(const ConvParams& p) {
  dispatch_dtype(p.x_dtype, [&]<typename X>() { serving::run<X>(p); });
}

// The upstream update (backend.h run_update). With several tokens and a
// linear state it is a serving step without the serving arguments:
// serving.h's plan gives it the same reads and writes (the last S inputs
// kept, padding rows written as zeros). Where serving::run's channel or
// register path takes the whole call, it runs there: those keep a block
// of channels in registers from load to store, where update_impl's
// ChannelBlock gathers the inputs into a transposed buffer. One token and
// circular buffers have their own paths in update_impl.
inline void update(const ConvParams& p) {
  dispatch_dtype(p.x_dtype, [&]<typename X>() {
    bool serving_path = serving::ChannelServing<X>::applies(p);
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    if constexpr (!std::is_same_v<X, double>)
      serving_path = serving_path || (serving::RegisterServing<X>::applies(p) &&
                                      p.seqlen <= serving::RegisterServing<X>::kMaxRun);
#endif
    if (p.seqlen > 1 && !p.cache_seqlens.given() && serving_path) return serving::run<X>(p);
    update_impl<X>(p);
  });
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
