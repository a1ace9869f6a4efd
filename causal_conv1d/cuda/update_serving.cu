// The serving engines' decode step (backend.h run_update_serving) on CUDA.
//
// One thread per (sequence, channel), channels fastest across threads so a
// warp reads and writes neighbouring channels. What a sequence reads and
// writes comes from serving.h's plan_sequence, shared with the CPU kernel,
// which also clamps every index read from the device (offsets, rows,
// accepted counts, parents). A thread first copies its W-1 window columns
// into registers, then computes its tokens (reading ancestors straight from
// x: a tree can point anywhere before a token), then writes its state row or
// its windows. No other thread touches that row or those windows (the host
// checks distinct rows when it can see them), so nothing synchronises.
#include "launch.h"
#include "common.cuh"
#include "../serving.h"

namespace causal_conv1d::cuda {
namespace {

// ---------------------------------------------------------------------------
// spec step: what a serving engine's speculative decode sends every step
// (num_accepted_tokens, x (B, D, 1 + k) with k < kSpecMaxTokens drafts, a
// pool indexed per sequence or not; no varlen, tree, windows, block table
// or block states), W in 2..8, each width compiled exactly. The general
// kernel below walks serving.h's plan per tap, in 64-bit arithmetic with
// divisions, which made this step instruction-bound at a fraction of the
// bandwidth. Here a block takes kThreads * kVec channels of one sequence, so
// the sequence's indices are one broadcast load, and a thread works in
// three phases like the plain decode kernel: every load (tokens, indices,
// taps, then its W - 1 history columns), the outputs, the stores. Nothing
// is loaded after a store, so no load waits for an earlier store to memory
// the compiler must assume aliased, and the step costs one memory round
// trip. In vLLM's layout (x, out and the pool with stride 1 along D) a
// thread takes kSpecChannels neighbouring channels, one access for all of
// them: even in registers the step stayed bound by its per-channel
// instructions (addresses, predicates, the sequence's indices) at one
// channel a thread.

// Tokens per step a thread keeps in registers (the last accepted token and
// up to 7 drafts); longer steps take the general kernel.
constexpr int kSpecMaxTokens = 8;

// Channels per thread in vLLM's layout: 16-byte accesses in fp32, 8-byte in
// 16-bit types. (Eight 16-bit channels, 16 bytes, take about twice the
// registers, near ptxas's limit at W = 8, and leave few warps per SM.)
constexpr int kSpecChannels = 4;

// kVec neighbouring elements stored as one access where the pack is a whole
// word (store_pack), element by element where it is narrower.
template <typename X, int kVec>
__device__ __forceinline__ void store_channels(X* dst, const Pack<X, kVec>& v) {
  if constexpr (kVec * sizeof(X) >= 4) {
    store_pack<X, kVec>(dst, v);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) dst[i] = v.v[i];
  }
}

template <typename X, int kW, int kVec>
__global__ void __launch_bounds__(kThreads) spec_step_kernel(ConvParams p) {
  constexpr int kH = kW - 1;  // history columns before the first token
  using V = Pack<X, kVec>;
  const int64_t S = p.state_len, L = p.seqlen, cs = p.conv_state.s2;
  const int64_t per_seq = (p.dim + kThreads * kVec - 1) / (kThreads * kVec);  // blocks per sequence
  const int64_t blocks = p.batch * per_seq;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const int64_t b = blk / per_seq;
    const int64_t d = ((blk - b * per_seq) * kThreads + threadIdx.x) * kVec;  // first channel
    if (d >= p.dim) continue;
    // seq: the inputs in stream order, history columns n - 1 .. n + W - 3
    // in seq[0 .. kH), then the tokens; token j reads seq[j .. j + kW).
    V seq[kH + kSpecMaxTokens];
    const X* x = ptr<const X>(p.x) + b * p.x.s0 + d * p.x.s1;
#pragma unroll
    for (int j = 0; j < kSpecMaxTokens; ++j) {
      if (j < L) seq[kH + j] = load_pack<X, kVec>(x + j * p.x.s2);
    }
    const int64_t row = live_row(p, p.state_indices.given() ? int32_at(p.state_indices, b) : b);
    const int64_t n = clamp_index(p.num_accepted[b], 1, S - kW + 2);
    float w[kVec][kW], bias[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) load_taps(p, d + v, w[v], bias[v]);
    X* out = ptr<X>(p.out) + b * p.out.s0 + d * p.out.s1;
    if (row < 0) {
      V zero;
#pragma unroll
      for (int v = 0; v < kVec; ++v) zero.v[v] = from_f<X>(0.f);
#pragma unroll
      for (int j = 0; j < kSpecMaxTokens; ++j) {
        if (j < L) store_channels(out + j * p.out.s2, zero);
      }
      continue;
    }
    X* state = ptr<X>(p.conv_state) + row * p.conv_state.s0 + d * p.conv_state.s1;
#pragma unroll
    for (int c = 0; c < kH; ++c) seq[c] = load_pack<X, kVec>(state + (n - 1 + c) * cs);

#pragma unroll
    for (int j = 0; j < kSpecMaxTokens; ++j) {
      if (j >= L) break;
      V y;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        // bias, then tap 0 (the oldest input) first: the plain update's
        // order, so that a speculative step and single-token steps round alike
        float acc = bias[v];
#pragma unroll
        for (int k = 0; k < kW; ++k) acc += w[v][k] * to_f(seq[j + k].v[v]);
        y.v[v] = from_f<X>(p.silu ? silu_out<X>(acc) : acc);
      }
      store_channels(out + j * p.out.s2, y);
    }
    // New column c is stream column n + c, seq[1 + c]: the history after
    // column n - 1, then the tokens; columns from W - 2 + L on stay.
    const int64_t count = clamp_index(kW - 2 + L, 0, S);
#pragma unroll
    for (int c = 0; c + 1 < kH + kSpecMaxTokens; ++c) {
      if (c < count) store_channels(state + c * cs, seq[1 + c]);
    }
  }
}

// The spec step in our default layout (x and out (B, D, L) with each
// channel's tokens contiguous, the pool (N, D, S) with each channel's
// columns contiguous): a block's 128 channels of one sequence are one
// contiguous run of tokens and one of state values, which the block copies
// through shared memory with neighbouring threads on neighbouring elements.
// Per thread, as above, those runs are strided by L and S elements, so each
// warp access touched many sectors for a few bytes of each. The state rows
// go back whole (columns past the step's count rewritten with their own
// values), so no thread needs a column's index.
template <typename X, int kW>
__global__ void __launch_bounds__(kThreads) spec_step_staged_kernel(ConvParams p) {
  constexpr int kH = kW - 1;
  constexpr int kMaxS = kW - 2 + kSpecMaxTokens;  // spec_step_stages' bound on S
  __shared__ X cols[kThreads * kMaxS];            // the block's state rows
  __shared__ X toks[kThreads * kSpecMaxTokens];   // its tokens, then its outputs
  const int S = static_cast<int>(p.state_len), L = static_cast<int>(p.seqlen);
  const int t = threadIdx.x;
  const int64_t per_seq = (p.dim + kThreads - 1) / kThreads;  // blocks per sequence
  const int64_t blocks = p.batch * per_seq;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const int64_t b = blk / per_seq;
    const int64_t d0 = (blk - b * per_seq) * kThreads;
    const int nch = p.dim - d0 < kThreads ? static_cast<int>(p.dim - d0) : kThreads;
    const int nt = nch * L, ns = nch * S;
    // row and n are the block's own (one sequence): every branch on them
    // below is taken by all its threads alike, barriers included
    const int64_t row = live_row(p, p.state_indices.given() ? int32_at(p.state_indices, b) : b);
    const int n = static_cast<int>(clamp_index(p.num_accepted[b], 1, S - kW + 2));
    const X* x = ptr<const X>(p.x) + b * p.x.s0 + d0 * L;
    X* out = ptr<X>(p.out) + b * p.out.s0 + d0 * L;
    X* state = ptr<X>(p.conv_state) + (row >= 0 ? row : 0) * p.conv_state.s0 + d0 * S;
    float w[kW], bias = 0.f;
    if (t < nch) load_taps(p, d0 + t, w, bias);
    for (int i = t; i < nt; i += kThreads) toks[i] = x[i];
    if (row >= 0) {
      for (int i = t; i < ns; i += kThreads) cols[i] = state[i];
    }
    __syncthreads();
    if (row >= 0 && t < nch) {
      X seq[kH + kSpecMaxTokens];  // as in spec_step_kernel
#pragma unroll
      for (int c = 0; c < kH; ++c) seq[c] = cols[t * S + n - 1 + c];
#pragma unroll
      for (int j = 0; j < kSpecMaxTokens; ++j) {
        if (j < L) seq[kH + j] = toks[t * L + j];
      }
#pragma unroll
      for (int j = 0; j < kSpecMaxTokens; ++j) {
        if (j >= L) break;
        float acc = bias;  // the plain update's order, as above
#pragma unroll
        for (int k = 0; k < kW; ++k) acc += w[k] * to_f(seq[j + k]);
        toks[t * L + j] = from_f<X>(p.silu ? silu_out<X>(acc) : acc);
      }
      const int count = kW - 2 + L < S ? kW - 2 + L : S;
#pragma unroll
      for (int c = 0; c + 1 < kH + kSpecMaxTokens; ++c) {
        if (c < count) cols[t * S + c] = seq[1 + c];
      }
    }
    __syncthreads();
    const X zero = from_f<X>(0.f);
    for (int i = t; i < nt; i += kThreads) out[i] = row >= 0 ? toks[i] : zero;
    if (row >= 0) {
      for (int i = t; i < ns; i += kThreads) state[i] = cols[i];
    }
    __syncthreads();  // the next block's copies overwrite cols and toks
  }
}

// Whether the default-layout spec step goes through shared memory: x, out
// and the pool with each channel's values contiguous and consecutive
// channels adjacent, and state rows of at most W - 2 + kSpecMaxTokens.
bool spec_step_stages(const ConvParams& p) {
  return p.x.s2 == 1 && p.x.s1 == p.seqlen && p.out.s2 == 1 && p.out.s1 == p.seqlen &&
         p.conv_state.s2 == 1 && p.conv_state.s1 == p.state_len &&
         p.state_len <= p.width - 2 + kSpecMaxTokens;
}

// Whether the spec kernel may take kSpecChannels channels per thread: x,
// out and the pool with stride 1 along D (vLLM's layout), and every address
// it forms a multiple of kSpecChannels elements.
bool spec_step_vectorizes(const ConvParams& p, int64_t elem_bytes) {
  constexpr int64_t e = kSpecChannels;
  return p.x.s1 == 1 && p.out.s1 == 1 && p.conv_state.s1 == 1 && p.dim % e == 0 &&
         vector_aligned(p.x.data, elem_bytes, e, p.x.s0, p.batch, p.x.s2, p.seqlen) &&
         vector_aligned(p.out.data, elem_bytes, e, p.out.s0, p.batch, p.out.s2, p.seqlen) &&
         vector_aligned(p.conv_state.data, elem_bytes, e, p.conv_state.s0, p.num_states,
                        p.conv_state.s2, p.state_len);
}

bool spec_step_applies(const ConvParams& p) {
  return p.num_accepted.data != nullptr && p.query_start_loc.data == nullptr &&
         !p.read_block.given() && !p.parents.given() && !p.windows.given() &&
         p.block_size == 0 && !p.has_initial_state.given() && p.width >= 2 && p.width <= 8 &&
         p.seqlen >= 1 &&  // without tokens nothing moves (the general kernel skips)
         p.seqlen <= kSpecMaxTokens;
}

// ---------------------------------------------------------------------------
// general: every serving call

template <typename X, int kMaxW>
__global__ void __launch_bounds__(kThreads) update_serving_kernel(ConvParams p) {
  const int64_t D = p.dim, W = p.width;
  const int64_t total = p.batch * D;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t d = i % D, b = i / D;
    const SeqPlan s = plan_sequence(p, b);
    if (s.len == 0) continue;
    const X* x = ptr<const X>(p.x) + b * p.x.s0 + d * p.x.s1 + s.first * p.x.s2;
    X* out = ptr<X>(p.out) + b * p.out.s0 + d * p.out.s1 + s.first * p.out.s2;
    if (s.read_row < 0) {
      for (int64_t j = 0; j < s.len; ++j) out[j * p.out.s2] = from_f<X>(0.f);
      continue;
    }
    X* state = ptr<X>(p.conv_state) + d * p.conv_state.s1;
    const X* read = state + s.read_row * p.conv_state.s0;
    const int64_t first_col = s.hist_len - (W - 1);
    X window[kMaxW - 1 > 0 ? kMaxW - 1 : 1];
#pragma unroll
    for (int c = 0; c < kMaxW - 1; ++c) {
      if (c < W - 1) {
        window[c] = s.zero_history ? from_f<X>(0.f) : read[(first_col + c) * p.conv_state.s2];
      }
    }
    const float bias = bias_at(p, d);
    for (int64_t j = 0; j < s.len; ++j) {
      // Token j's inputs, newest first; then tap 0 (the oldest) first, the
      // order of the plain update, so both round alike.
      int64_t srcs[kMaxW];
      int64_t walk = j;
#pragma unroll
      for (int i = 0; i < kMaxW; ++i) {
        if (i < W) srcs[i] = step_back(p, b, s, i, &walk);
      }
      float acc = bias;
#pragma unroll
      for (int k = 0; k < kMaxW; ++k) {
        if (k < W) {
          const int64_t i = W - 1 - k, src = srcs[i];
          X v;
          if (src >= 0) {
            v = x[src * p.x.s2];
          } else {
            // window index of history column -1 - src, in [0, W-1): the
            // search keeps the register array statically indexed
            const int64_t c = -1 - src - first_col;
#pragma unroll
            for (int q = 0; q < kMaxW - 1; ++q) {
              if (q == c) v = window[q];
            }
          }
          acc += weight_at(p, d, k) * to_f(v);
          if (s.window_row >= 0 && i < W - 1) {
            static_cast<X*>(p.windows.data)[s.window_row * p.windows.s0 + j * p.windows.s1 +
                                            d * p.windows.s2 + (W - 2 - i) * p.windows.s3] = v;
          }
        }
      }
      out[j * p.out.s2] = from_f<X>(p.silu ? silu_out<X>(acc) : acc);
    }
    // Written rows receive stream columns [from, from + count): history
    // columns (or zeros) then tokens. Ascending: in place, column c reads
    // column from + c > c before anything overwrites it. Written rows are
    // distinct, so at most one of them is the read row: it goes last, once
    // every other write has read the history.
    auto write_stream = [&](int64_t row, int64_t from, int64_t count) {
      X* write = state + row * p.conv_state.s0;
      for (int64_t c = 0; c < count; ++c) {
        const int64_t src = from + c;
        X v;
        if (src >= s.hist_len) {
          v = x[(src - s.hist_len) * p.x.s2];
        } else {
          v = s.zero_history ? from_f<X>(0.f) : read[src * p.conv_state.s2];
        }
        write[c * p.conv_state.s2] = v;
      }
    };
    for (int pass = 0; pass < 2; ++pass) {
      auto in_pass = [&](int64_t row) { return row >= 0 && (row == s.read_row) == (pass == 1); };
      for (int64_t k = 0; k < s.boundaries; ++k) {
        const int64_t row = block_state_row(p, b, s, k);
        if (in_pass(row)) {
          write_stream(row, s.hist_len + s.first_boundary + k * p.block_size - p.state_len,
                       p.state_len);
        }
      }
      if (s.count > 0 && in_pass(s.write_row)) write_stream(s.write_row, s.shift, s.count);
    }
  }
}

}  // namespace

void launch_update_serving(const ConvParams& p, cudaStream_t stream) {
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    if (spec_step_applies(p)) {
      const bool vec = spec_step_vectorizes(p, sizeof(X));
      const int64_t per_block = kThreads * (vec ? kSpecChannels : 1);
      const int64_t threads = p.batch * ((p.dim + per_block - 1) / per_block) * kThreads;
      dispatch_exact_width_2_to_8(p.width, [&](auto wt) {
        constexpr int kW = decltype(wt)::kW;
        if (vec) {
          launch(spec_step_kernel<X, kW, kSpecChannels>, grid_for(threads), stream, p);
        } else if (spec_step_stages(p)) {
          launch(spec_step_staged_kernel<X, kW>, grid_for(threads), stream, p);
        } else {
          launch(spec_step_kernel<X, kW, 1>, grid_for(threads), stream, p);
        }
      });
      return;
    }
    const unsigned grid = grid_for(p.batch * p.dim);
    if (p.width <= 4) {
      launch(update_serving_kernel<X, 4>, grid, stream, p);
    } else if (p.width <= 8) {
      launch(update_serving_kernel<X, 8>, grid, stream, p);
    } else {
      launch(update_serving_kernel<X, 32>, grid, stream, p);
    }
  });
}

}  // namespace causal_conv1d::cuda
