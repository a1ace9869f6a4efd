// Decode step (backend.h run_update) on CPU, and the channel-block engine
// that packed.h's prefill shares.
//
// Decode touches a few values per channel (S state columns, one token), so
// all of it is vectorized across channels and split into (batch row, block
// of channels) tasks, run batch-row-major so the states stream through
// memory in order. Each thread first transposes the weights of the channels
// it will see (tap k of every channel in one row) into a per-thread buffer
// that later calls reuse: decode allocates nothing.
//
// Two paths:
//  - RegisterDecode (AVX-512, AVX2; decode_regs.h): one token with the usual
//    contiguous (N, D, S <= 8) state. The states of a block of channels are loaded as
//    whole registers; window columns, the shifted state and the token's place
//    in it are in-register permutes.
//  - ChannelBlock, everything else (any strides, L > 1, wide states, fp64,
//    the portable tier; but update_serving.h's update sends L > 1 on a
//    linear state to the serving paths where one of them takes the whole
//    call): the W-1 inputs before the next token are gathered
//    into a transposed buffer (lanes = channels), after which every token is
//    W vector FMAs over that buffer. Only the gathers into the buffer and the
//    state update (shift_state) look at the layout.
#pragma once

#include <algorithm>
#include <cstring>
#include <array>
#include <type_traits>
#include <vector>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "common.h"
#include "decode_regs.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {

// ((a % m) + m) % m for a possibly negative a, m > 0.
inline int64_t wrap_index(int64_t a, int64_t m) {
  const int64_t r = a % m;
  return r < 0 ? r + m : r;
}

// Up to kLanes channels of one stream (one sequence or batch row), computed
// with one vector lane per channel. Per stream and block of channels: bind
// the block's weights, load_window (or clear_window), run over its tokens,
// then write the state (shift_state).
template <typename X>
struct ChannelBlock {
  using A = acc_t<X>;
  using V = at::vec::Vectorized<A>;
  static constexpr int64_t N = V::size();
  static constexpr int64_t kLanes = 2 * N;  // channels per block: two vectors
  static constexpr int64_t kChunk = 32;     // tokens per pass through buf
  static constexpr bool kSameAsAcc = std::is_same_v<X, A>;

  static constexpr int64_t kMaxGatherStride = 16;  // channel stride the gathers take
  using I = at::vec::int_same_size_t<A>;
  using IV = at::vec::Vectorized<I>;

  int64_t width = 1;
  int64_t lanes = kLanes;  // live channels (the last block may have fewer)
  bool silu = false;
  const A* taps = nullptr;  // tap k of lane j at taps[k * tap_stride + j]
  int64_t tap_stride = 0;
  const A* bias = nullptr;
  int64_t gather_stride = 0;  // the channel stride `gather_index` was made for
  IV gather_index;            // lane l: l * gather_stride
  // Rows 0..W-2: the W-1 inputs before the current chunk, oldest first;
  // rows W-1..W-2+tc: the chunk's tokens. Token t's window is rows t..t+W-1.
  alignas(64) A buf[kMaxWidthCpu - 1 + kChunk][kLanes];
  alignas(64) A res[kChunk][kLanes];
  // A block of states with contiguous columns, widened to A for the gathers.
  alignas(64) A flat[kLanes * (kMaxGatherStride + 1)];

  ChannelBlock(const ConvParams& p) : width(p.width), silu(p.silu) {}

  // Channels d0 .. d0+n-1 (n <= kLanes).
  void bind(const TapRows<A>& rows, int64_t d0, int64_t n) {
    lanes = n;
    taps = rows.tap(0, d0);
    tap_stride = rows.stride;
    bias = rows.bias(d0);
  }

  void clear_window() {
    for (int64_t k = 0; k + 1 < width; ++k) std::fill(buf[k], buf[k] + kLanes, A(0));
  }

  // Window row k (k < W-1) = column col[k] of each channel's state:
  // st[j * s_ch + col[k] * s_col] for lane j.
  void load_window(const X* st, int64_t s_ch, int64_t s_col, const int64_t* col) {
    if (width == 1) return;
    if (s_ch == 1) {  // columns are contiguous: one vector load per row
      for (int64_t k = 0; k + 1 < width; ++k) load_lanes(st + col[k] * s_col, buf[k]);
      return;
    }
    if (s_col == 1 && s_ch <= kMaxGatherStride) {  // per-channel contiguous: gather
      gather_window(st, s_ch, col);
      return;
    }
    for (int64_t k = 0; k + 1 < width; ++k) {
      VecIO<X>::load_row(st + col[k] * s_col, s_ch, buf[k], lanes);
      std::fill(buf[k] + lanes, buf[k] + kLanes, A(0));
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
  // The lanes' states are runs of s_ch (<= kMaxGatherStride) values: gather
  // column col[k] of every lane, straight from x-dtype memory when it needs
  // no widening, else from a widened copy of the block.
  void gather_window(const X* st, int64_t s_ch, const int64_t* col) {
    if (gather_stride != s_ch) {
      alignas(64) I idx[N];
      for (int64_t l = 0; l < N; ++l) idx[l] = static_cast<I>(l * s_ch);
      gather_index = IV::loadu(idx);
      gather_stride = s_ch;
    }
    const A* src;
    if constexpr (kSameAsAcc) {
      src = st;
    }
    if (!kSameAsAcc || lanes < kLanes) {
      // widen the block's span (zeros past its end, so every lane reads
      // memory of this buffer)
      int64_t max_col = 0;
      for (int64_t k = 0; k + 1 < width; ++k) max_col = std::max(max_col, col[k]);
      const int64_t span = (lanes - 1) * s_ch + max_col + 1;
      for (int64_t i = 0; i < span; i += kLanes) {
        const int64_t m = std::min(kLanes, span - i);
        load_lanes(st + i, flat + i, m);
      }
      std::fill(flat + span, flat + kLanes * s_ch, A(0));
      src = flat;
    }
    for (int64_t k = 0; k + 1 < width; ++k)
      for (int64_t h = 0; h < kLanes; h += N)
        at::vec::gather<sizeof(A)>(src + col[k] + h * s_ch, gather_index).store(buf[k] + h);
  }

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
          acc = at::vec::fmadd(V::loadu(taps + k * tap_stride + h), V::loadu(buf[t + k] + h), acc);
        if (silu) acc = silu_vec<X>(acc);
        acc.store(res[t] + h);
      }
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

  // `lanes` (or n) consecutive values of x's dtype <-> kLanes accumulators;
  // lanes past them read as zero.
  void load_lanes(const X* src, A* dst) const { load_lanes(src, dst, lanes); }
  static void load_lanes(const X* src, A* dst, int64_t n) {
    V a, b;
    VecIO<X>::load2(src, n, a, b);
    a.store(dst);
    b.store(dst + N);
  }

  void store_lanes(const A* src, X* dst) const {
    VecIO<X>::store2(dst, V::loadu(src), V::loadu(src + N), lanes);
  }
};

// dst[j * d_ch] = src[j * s_ch] for j < n.
template <typename X>
inline void copy_channels(const X* src, int64_t s_ch, X* dst, int64_t d_ch, int64_t n) {
  if (s_ch == 1 && d_ch == 1) {
    std::memcpy(dst, src, sizeof(X) * n);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j * d_ch] = src[j * s_ch];
  }
}

// After a stream of L tokens, each of the n channels' S state columns
// (st[j * s_ch + i * s_col]) holds the last S inputs of (old state, tokens),
// oldest first; with keep_old false the old state counts as zeros. Values
// are copied, never converted, so the state stays bit-exact.
template <typename X>
void shift_state(X* st, int64_t s_ch, int64_t s_col, int64_t S, int64_t n, const X* x,
                 int64_t xs_ch, int64_t xs_tok, int64_t L, bool keep_old) {
  if (S == 0 || n == 0) return;
  const int64_t kept = std::max<int64_t>(S - L, 0);  // old columns that survive
  if (kept > 0 && !keep_old) {
    for (int64_t i = 0; i < kept; ++i)
      for (int64_t j = 0; j < n; ++j) st[j * s_ch + i * s_col] = X(0);
  } else if (kept > 0 && L > 0) {
    if (s_col == 1 && s_ch == S) {
      // the n channels are one contiguous run: shift it all left by L; the
      // columns this drags across channel boundaries are the ones the new
      // tokens overwrite below
      std::memmove(st, st + L, sizeof(X) * (n * S - L));
    } else if (s_ch == 1) {
      for (int64_t i = 0; i < kept; ++i)
        std::memmove(st + i * s_col, st + (i + L) * s_col, sizeof(X) * n);
    } else {
      for (int64_t i = 0; i < kept; ++i)
        for (int64_t j = 0; j < n; ++j) st[j * s_ch + i * s_col] = st[j * s_ch + (i + L) * s_col];
    }
  }
  const int64_t first = L - (S - kept);  // first token that lands in the state
  for (int64_t i = kept; i < S; ++i)
    copy_channels(x + (first + i - kept) * xs_tok, xs_ch, st + i * s_col, s_ch, n);
}


// One token of channels [d0, d1) whose state columns are rows of channels
// (stride 1 between channels, s_col >= D between columns: vLLM's layout),
// straight from memory to registers: window column k is col[k]. Blocks of
// 2 kLanes<A> channels go through registers and their outputs are stored;
// then the state moves as whole column runs, write_col < 0 shifting it one
// column left with the token last, else the token going to column
// write_col. Moving each block's few lines between the blocks' arithmetic
// was slower: short copies that each load from the addresses, modulo
// 4 KiB, that the copy before them stored to when D is a power of two.
// kW is W, or 0 for any width. The arithmetic is ChannelBlock's, in its
// order; the state moves as raw values.
template <typename X, int kW>
void decode_channel_rows(const ConvParams& p, const TapRows<acc_t<X>>& taps, int64_t d0,
                         int64_t d1, const X* x, X* out, X* st, const int64_t* col,
                         int64_t write_col) {
  using A = acc_t<X>;
  using V = Vec<A>;
  using IO = VecIO<X>;
  constexpr int64_t N = kLanes<A>;
  const int64_t W = kW ? kW : p.width, S = p.state_len, sc = p.conv_state.s2;
  const bool silu = p.silu;
  for (int64_t d = d0; d < d1; d += 2 * N) {
    const int64_t n = std::min(2 * N, d1 - d);
    V a0 = V::loadu(taps.bias(d)), a1 = V::loadu(taps.bias(d) + N);
    V v0, v1;
    auto tap = [&](int64_t k, const X* src) {
      IO::load2(src, n, v0, v1);
      a0 = at::vec::fmadd(V::loadu(taps.tap(k, d)), v0, a0);
      a1 = at::vec::fmadd(V::loadu(taps.tap(k, d) + N), v1, a1);
    };
    for (int64_t k = 0; k + 1 < W; ++k) tap(k, st + col[k] * sc + d);
    tap(W - 1, x + d);
    if (silu) {
      a0 = silu_vec<X>(a0);
      a1 = silu_vec<X>(a1);
    }
    IO::store2(out + d, a0, a1, n);
  }
  const size_t bytes = sizeof(X) * (d1 - d0);
  if (write_col >= 0) {
    std::memcpy(st + write_col * sc + d0, x + d0, bytes);
    return;
  }
  for (int64_t i = 0; i + 1 < S; ++i) std::memcpy(st + i * sc + d0, st + (i + 1) * sc + d0, bytes);
  std::memcpy(st + (S - 1) * sc + d0, x + d0, bytes);
}

// Tasks of about this many channel-token steps share a thread; below it a
// call stays on the calling thread (waking the pool costs more).
constexpr int64_t kTaskGrainSteps = int64_t(1) << 17;

template <typename X>
void update_impl(const ConvParams& p) {
  using Block = ChannelBlock<X>;
  using A = typename Block::A;
  constexpr int64_t kLanes = Block::kLanes;
  const int64_t B = p.batch, D = p.dim, L = p.seqlen, W = p.width, S = p.state_len;
  const int64_t nblk = (D + kLanes - 1) / kLanes;
  const int32_t* indices = ptr<int32_t>(p.state_indices);
  const int32_t* seqlens = ptr<int32_t>(p.cache_seqlens);
  const int64_t s_ch = p.conv_state.s1, s_col = p.conv_state.s2;
  const int64_t grain = std::max<int64_t>(1, kTaskGrainSteps / (kLanes * (L + W + S)));

  // Tasks are (batch row, channel block), row-major: states stream in order.
  at::parallel_for(0, B * nblk, grain, [&](int64_t begin, int64_t end) {
    const bool one_row = begin / nblk == (end - 1) / nblk;
    const TapRows<A> taps = transpose_taps<A>(p, kLanes, one_row ? begin % nblk : 0,
                                              one_row ? (end - 1) % nblk + 1 : nblk);
    Block blk(p);
    int64_t col[kMaxWidthCpu];
    // One token with state columns that are rows of channels (vLLM's
    // layout): no transposed buffer needed.
    const bool channel_rows = L == 1 && S >= 1 && s_ch == 1 && s_col >= D && p.x.s1 == 1 &&
                              p.out.s1 == 1;
    // Batch row b's pool row (negative: a padding row).
    auto pool_row = [&](int64_t b) { return indices ? indices[b * p.state_indices.s0] : b; };
    // Fills col with batch row b's window columns and returns its next
    // write column (0 for a linear state). Circular buffer: the next write
    // goes to column seqlens[b] % S and the W-1 columns before it
    // (circularly) are the window. Linear: the last W-1 columns are.
    auto window = [&](int64_t b) {
      const int64_t next = seqlens ? seqlens[b * p.cache_seqlens.s0] : 0;
      for (int64_t k = 0; k + 1 < W; ++k)
        col[k] = seqlens ? wrap_index(next - (W - 1) + k, S) : S - (W - 1) + k;
      return next;
    };
    // One task in the engine: any layout, any token count.
    auto task = [&](int64_t b, int64_t c) {
      const int64_t d0 = c * kLanes, n = std::min(kLanes, D - d0);
      const X* x = ptr<X>(p.x) + b * p.x.s0 + d0 * p.x.s1;
      X* out = ptr<X>(p.out) + b * p.out.s0 + d0 * p.out.s1;
      const int64_t row = pool_row(b);
      if (row < 0) {  // padding row: output 0, state untouched
        for (int64_t t = 0; t < L; ++t)
          for (int64_t j = 0; j < n; ++j) out[j * p.out.s1 + t * p.out.s2] = X(0);
        return;
      }
      X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d0 * s_ch;
      const int64_t next = window(b);
      blk.bind(taps, d0, n);
      blk.load_window(st, s_ch, s_col, col);
      blk.run(x, p.x.s1, p.x.s2, L, out, p.out.s1, p.out.s2);
      if (seqlens) {
        for (int64_t i = std::max<int64_t>(L - S, 0); i < L; ++i)  // later tokens win
          copy_channels(x + i * p.x.s2, p.x.s1, st + wrap_index(next + i, S) * s_col, s_ch, n);
      } else {
        shift_state(st, s_ch, s_col, S, n, x, p.x.s1, p.x.s2, L, /*keep_old=*/true);
      }
    };
    if (channel_rows) {
      // A row's blocks in one loop: its pool row, window columns and
      // pointers are found once, not once per block of kLanes channels,
      // which is only a few dozen instructions of work. Nothing is
      // prefetched: each state column is a long run of channels that the
      // hardware prefetchers follow.
      for (int64_t t = begin; t < end;) {
        const int64_t b = t / nblk, c0 = t % nblk, c1 = std::min(nblk, c0 + (end - t));
        t += c1 - c0;
        const int64_t row = pool_row(b);
        if (row < 0) {  // padding row: task's zeros
          for (int64_t c = c0; c < c1; ++c) task(b, c);
          continue;
        }
        const X* x = ptr<X>(p.x) + b * p.x.s0;
        X* out = ptr<X>(p.out) + b * p.out.s0;
        X* st = ptr<X>(p.conv_state) + row * p.conv_state.s0;
        const int64_t next = window(b);
        const int64_t write_col = seqlens ? wrap_index(next, S) : -1;
        dispatch_width(W, [&]<int kW>() {
          decode_channel_rows<X, kW>(p, taps, c0 * kLanes, std::min(c1 * kLanes, D), x, out, st,
                                     col, write_col);
        });
      }
      return;
    }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    if constexpr (!std::is_same_v<X, double>) {
      static_assert(kLanes == 2 * RegisterDecode<X>::kR);
      if (RegisterDecode<X>::applies(p)) {
        RegisterDecode<X>(p).run(p, taps, nblk, begin, end, task);
        return;
      }
    }
#endif
    const UpdatePrefetch ahead{prefetch_group(kLanes), nblk, kLanes, end};
    for (int64_t t = begin; t < end; ++t) {
      ahead.before<X>(p, t);
      task(t / nblk, t % nblk);
    }
  });
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
