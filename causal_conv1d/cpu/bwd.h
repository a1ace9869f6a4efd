// Backward (backend.h run_bwd) on CPU.
//
// With pre[t] = bias + sum_k w[k] * xin[t - (W-1) + k] (the forward before its
// activation, recomputed here from x) and g[t] = dout[t] * act'(pre[t]):
//   dxin[p]    = sum_k w[k] * g[p + (W-1) - k]    dx for p >= 0, dinitial_states for p < 0
//   dweight[k] = sum_t g[t] * xin[t - (W-1) + k]
//   dbias      = sum_t g[t]
// plus dfinal_states[j] flowing into the input position final_states[j] was
// copied from. With seq_idx every (input position, token) pair of different
// ids is cut, and padding tokens (id < 0) have g = 0, as in the forward.
//
// Work is cut into tasks of (batch row, chunk of tokens, block of channels);
// the chunk and block sizes are constants. Every task converts its slice to
// the arithmetic type in small buffers (with the W-1 halo it needs on either
// side), writes its own dx, and writes its own partial dweight / dbias rows;
// the partials are then summed over (batch, chunk) in a fixed order. Nothing
// depends on the thread count or on scheduling (no atomics, no per-thread
// reductions), so results are bitwise reproducible with any number of
// threads: p.deterministic needs no separate path.
//
// Two compute layouts: vectors along t (x contiguous along L, and any other
// strides, gathered) and vectors along channels (channel-last x, s1 == 1).
#pragma once

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "common.h"

namespace causal_conv1d::cpu::CPU_CAPABILITY {
namespace bwd_impl {

using at::vec::Vectorized;

// Tokens per task for each layout: changing them changes the summation order
// of dweight / dbias (not their meaning). Channels per task: kGroupT along t;
// channel-last tasks take cl_span channels (below), kBlockC at a time where
// they go through cl_block.
constexpr int64_t kChunkT = 1024;  // vectors along t
constexpr int64_t kGroupT = 8;     // channels per task (amortizes seq_idx masks)
constexpr int64_t kChunkC = 128;   // vectors along channels (channel-last)
constexpr int64_t kFusedMaxW = 8;  // widths with a fused kernel (WC = W), both layouts
constexpr int64_t kBlockC = 32;    // lanes per cl_block call, a multiple of every vector size
// Rows (tokens) ahead that cl_block asks the cache for: its rows are kBlockC
// channels wide and one row of the tensor apart, a pattern the hardware
// prefetchers do not follow.
constexpr int64_t kAheadC = 8;

// ---------------------------------------------------------------------------
// dout in another layout than x
//
// The fused paths read dout along the compute layout's vectors. A dout laid
// out the other way (x contiguous along L and a gradient that came back
// through a (B * L, D) projection of the output, channel-last; or the
// reverse) would be a gather per element, so each fused task first copies
// its slice of dout into a small buffer in x's layout, transposing blocks
// of kStageB x kStageB.

constexpr int kStageB = 16;

// dst[c * ld + r] = src[r * rs + c * cs] for r < rows, c < cols.
template <typename X>
void stage_transposed(const X* src, int64_t rs, int64_t cs, int64_t rows, int64_t cols, X* dst,
                      int64_t ld) {
  if (cs != 1) {
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t r = 0; r < rows; ++r) dst[c * ld + r] = src[r * rs + c * cs];
    return;
  }
  for (int64_t r = 0; r < rows; r += kStageB) {
    const int m = int(std::min<int64_t>(kStageB, rows - r));
    for (int64_t c = 0; c < cols; c += kStageB) {
      const int n = int(std::min<int64_t>(kStageB, cols - c));
      if (m == kStageB && n == kStageB)
        at::vec::transpose_mxn<X, kStageB, kStageB>(src + r * rs + c, rs, dst + c * ld + r, ld);
      else
        at::vec::transpose_mxn<X>(src + r * rs + c, rs, dst + c * ld + r, ld, m, n);
    }
  }
}

// Part i of `parts` of the lines of dout's block (batch row b, channels d0 ..
// d0 + nd - 1, tokens t0 .. t0 + n - 1), into L2: a task asks for the block
// the next task stages a part at a time, so that the lines arrive paced by
// its work. Its rows are a few lines long and a tensor row apart, a
// pattern the hardware prefetchers do not follow across pages.
struct DoutBlock {
  int64_t b = 0, d0 = 0, nd = 0, t0 = 0, n = 0;  // n == 0: no block
};

template <typename X>
void prefetch_dout_part(const ConvParams& p, const DoutBlock& k, int64_t i, int64_t parts) {
  if (k.n == 0) return;
  const X* at = ptr<X>(p.dout) + k.b * p.dout.s0 + k.d0 * p.dout.s1 + k.t0 * p.dout.s2;
  int64_t outer = k.n, so = p.dout.s2, inner = k.nd, si = p.dout.s1;
  if (so < si) std::swap(outer, inner), std::swap(so, si);
  constexpr int64_t kLine = 64 / sizeof(X);
  const int64_t step = si == 1 ? kLine : std::max<int64_t>(1, inner - 1);
  for (int64_t o = outer * i / parts; o < outer * (i + 1) / parts; ++o) {
    const X* row = at + o * so;
    for (int64_t j = 0; j < inner; j += step) prefetch_line_l2(row + j * si);
    prefetch_line_l2(row + (inner - 1) * si);
  }
}

// ---------------------------------------------------------------------------
// silu'

// dy * silu'(z), silu'(z) = s * (1 + z * (1 - s)), s = sigmoid(z).
template <typename A>
inline Vectorized<A> dsilu_mul(const Vectorized<A>& z, const Vectorized<A>& dy) {
  const Vectorized<A> one(A(1));
  const Vectorized<A> s = sigmoid_vec<A>(z);
  return dy * s * (one + z * (one - s));
}

template <typename A>
inline A sum_lanes(const Vectorized<A>& v) {
  // A fixed order, so the result does not depend on anything but v.
  __at_align__ A tmp[Vectorized<A>::size()];
  v.store(tmp);
  A s = A(0);
  for (int64_t i = 0; i < Vectorized<A>::size(); ++i) s += tmp[i];
  return s;
}

// ---------------------------------------------------------------------------
// what every task shares

template <typename A>
struct Job {
  const ConvParams* p;
  int64_t B, D, L, W, H;  // H = W - 1, the halo
  int64_t chunk, n_chunks, block, n_blocks;
  const A* w;     // (D, W) taps in A
  const A* bias;  // (D,) or nullptr
  A* part_w;      // (B * n_chunks, D, W): partial dweight of one (b, chunk)
  A* part_b;      // (B * n_chunks, D) or nullptr
  bool stage_dy;  // dout is not in the compute layout: fused tasks stage it
};

// One task's token range and the segment ids around it.
struct Span {
  int64_t b = 0, c = 0;
  int64_t t0 = 0, t1 = 0;  // tokens whose dx this task writes
  int64_t te = 0;          // g is needed for tokens [t0, te), te = min(t1 + H, L)
  int64_t ilo = 0;         // -H when the task also writes dinitial_states
  bool masked = false;     // ids differ inside the window: cut pairs
  bool dead = false;       // every id in the window is padding: g = 0
  int32_t first_id = 0, last_id = 0;
  // ids[r] is the id of position t0 - H + r (positions < 0: the first
  // segment's id, as the reference's ids_in), r in [0, te - t0 + H).
  const int32_t* ids = nullptr;
};

template <typename A>
Span make_span(const Job<A>& j, int64_t b, int64_t c, std::vector<int32_t>& ids) {
  const ConvParams& p = *j.p;
  Span s;
  s.b = b;
  s.c = c;
  s.t0 = c * j.chunk;
  s.t1 = std::min(j.L, s.t0 + j.chunk);
  s.te = std::min(j.L, s.t1 + j.H);
  s.ilo = (c == 0 && p.dinitial_states.given()) ? -j.H : 0;
  if (!p.seq_idx.given()) return s;
  const int32_t* sr = ptr<int32_t>(p.seq_idx) + b * p.seq_idx.s0;
  const int64_t ss = p.seq_idx.s1;
  s.first_id = sr[0];
  s.last_id = sr[(j.L - 1) * ss];
  const int64_t nx = s.te - s.t0 + j.H;
  bool uniform = true;
  for (int64_t r = 0; r < nx; ++r) {
    const int64_t pos = s.t0 - j.H + r;
    ids[r] = pos < 0 ? s.first_id : sr[pos * ss];
    uniform = uniform && ids[r] == ids[0];
  }
  s.ids = ids.data();
  s.masked = !uniform;
  s.dead = uniform && ids[0] < 0;
  return s;
}

// dfinal_states[j] flows into position L - H + j (when that position fed
// final_states); returns the gradient to add at position pos, or 0.
template <typename X, typename A>
inline A dfinal_at(const ConvParams& p, const Span& s, int64_t H, int64_t L, int64_t d,
                   int64_t pos) {
  if (!p.dfinal_states.given() || pos < L - H) return A(0);
  if (s.ids && s.ids[pos - s.t0 + H] != s.last_id) return A(0);
  const X* df = ptr<X>(p.dfinal_states) + s.b * p.dfinal_states.s0 + d * p.dfinal_states.s1;
  return A(df[(pos - (L - H)) * p.dfinal_states.s2]);
}

// ---------------------------------------------------------------------------
// vectors along t: one channel at a time, buffers indexed by token

template <typename A>
struct TimeBufs {
  // Sized for one chunk plus halos plus slack for whole-vector over-reads.
  std::vector<A> xb, dy, gb, dxb, masks;
  std::vector<int32_t> ids;
  TimeBufs(int64_t W, bool seq) {
    const int64_t V = Vectorized<A>::size(), H = W - 1;
    const int64_t len = kChunkT + 2 * H + 4 * V;
    xb.assign(len, A(0));
    dy.assign(len, A(0));
    gb.assign(len, A(0));
    dxb.assign(len, A(0));
    if (seq) {
      masks.assign(W * len, A(0));
      ids.assign(len, 0);
    }
  }
  int64_t len() const { return static_cast<int64_t>(xb.size()); }
};

// A lane mask for bitwise selects: all bits set, or none. A cut pair is
// selected away (x & 0 == +0), never multiplied by 0, so NaN/Inf in another
// segment or in a padding token cannot leak in (NaN * 0 is NaN).
template <typename A>
inline A lane_mask(bool on) {
  using U = std::conditional_t<sizeof(A) == 4, uint32_t, uint64_t>;
  const U u = on ? ~U(0) : U(0);
  A a;
  std::memcpy(&a, &u, sizeof(A));
  return a;
}

// masks[k * len + H + j] selects the pair (position t - H + k, token
// t = t0 + j): same id and the token is not padding. None outside [0, ng).
template <typename A>
void build_masks(const Span& s, int64_t W, TimeBufs<A>& bufs) {
  const int64_t H = W - 1, len = bufs.len(), ng = s.te - s.t0;
  const A on = lane_mask<A>(true), off = lane_mask<A>(false);
  A* m = bufs.masks.data();
  std::fill(m, m + W * len, off);
  for (int64_t k = 0; k < W; ++k) {
    A* mk = m + k * len + H;
    for (int64_t j = 0; j < ng; ++j) {
      const int32_t id = s.ids[j + H];
      mk[j] = (id >= 0 && s.ids[j + k] == id) ? on : off;
    }
  }
}

template <typename X, typename A, bool kMasked>
void time_channel(const Job<A>& job, const Span& s, int64_t d, TimeBufs<A>& bufs) {
  using Vec = Vectorized<A>;
  using IO = VecIO<X>;
  static_assert(std::is_same_v<typename IO::A, A>);
  constexpr int64_t V = Vec::size();
  const ConvParams& p = *job.p;
  const int64_t W = job.W, H = job.H, L = job.L, b = s.b;
  const int64_t n = s.t1 - s.t0, ng = s.te - s.t0, nx = ng + H, len = bufs.len();
  A* xb = bufs.xb.data();
  A* dy = bufs.dy.data();
  A* gb = bufs.gb.data();
  A* dxb = bufs.dxb.data();
  const A* masks = kMasked ? bufs.masks.data() : nullptr;

  std::array<Vec, kMaxWidthCpu> wv;
  const A* wd = job.w + d * W;
  for (int64_t k = 0; k < W; ++k) wv[k] = Vec(wd[k]);

  // g[t] for t in [t0, te), into gb[H + j]; gb is zero elsewhere.
  std::fill(gb, gb + len, A(0));
  if (!s.dead) {
    // xb[r] is input position t0 - H + r (silu's pre-activation and dweight).
    const X* xr = ptr<X>(p.x) + b * p.x.s0 + d * p.x.s1;
    const int64_t lead = std::max<int64_t>(0, -(s.t0 - H));  // positions < 0
    if (lead > 0) {
      if (p.initial_states.given()) {
        const X* ir =
            ptr<X>(p.initial_states) + b * p.initial_states.s0 + d * p.initial_states.s1;
        IO::load_row(ir + (H - lead) * p.initial_states.s2, p.initial_states.s2, xb, lead);
      } else {
        std::fill(xb, xb + lead, A(0));
      }
    }
    IO::load_row(xr + (s.t0 - H + lead) * p.x.s2, p.x.s2, xb + lead, nx - lead);
    std::fill(xb + nx, xb + len, A(0));

    const X* dyr = ptr<X>(p.dout) + b * p.dout.s0 + d * p.dout.s1;
    IO::load_row(dyr + s.t0 * p.dout.s2, p.dout.s2, dy, ng);
    std::fill(dy + ng, dy + len, A(0));
    const int64_t ngv = (ng + V - 1) / V * V;
    if (p.silu) {
      const Vec bias(job.bias ? job.bias[d] : A(0));
      int64_t j = 0;
      for (; j + 2 * V <= ngv; j += 2 * V) {
        Vec a0 = bias, a1 = bias;
        for (int64_t k = 0; k < W; ++k) {
          Vec x0 = Vec::loadu(xb + j + k), x1 = Vec::loadu(xb + j + V + k);
          if constexpr (kMasked) {
            const A* mk = masks + k * len + H + j;
            x0 = x0 & Vec::loadu(mk);
            x1 = x1 & Vec::loadu(mk + V);
          }
          a0 = at::vec::fmadd(wv[k], x0, a0);
          a1 = at::vec::fmadd(wv[k], x1, a1);
        }
        dsilu_mul(a0, Vec::loadu(dy + j)).store(gb + H + j);
        dsilu_mul(a1, Vec::loadu(dy + j + V)).store(gb + H + j + V);
      }
      for (; j < ngv; j += V) {
        Vec a0 = bias;
        for (int64_t k = 0; k < W; ++k) {
          Vec x0 = Vec::loadu(xb + j + k);
          if constexpr (kMasked) x0 = x0 & Vec::loadu(masks + k * len + H + j);
          a0 = at::vec::fmadd(wv[k], x0, a0);
        }
        dsilu_mul(a0, Vec::loadu(dy + j)).store(gb + H + j);
      }
    } else {
      std::memcpy(gb + H, dy, ngv * sizeof(A));
    }
    if constexpr (kMasked) {
      // Padding tokens: no gradient. masks[H] is exactly "token is not padding".
      const A* keep = masks + H * len + H;
      for (int64_t j = 0; j < ngv; j += V)
        (Vec::loadu(gb + H + j) & Vec::loadu(keep + j)).store(gb + H + j);
    }
    std::fill(gb + H + ng, gb + len, A(0));
  }

  // dxin[p] for p = t0 + i, i in [ilo, n): sum_k w[k] g[p + H - k] (pair cut
  // when ids differ), into dxb[i - ilo].
  const int64_t nd = n - s.ilo;
  const int64_t ndv = (nd + V - 1) / V * V;
  // dxin[i] = sum_k w[k] * gb[i + 2H - k]; with q = i - ilo: gq[q - k].
  const A* gq = gb + s.ilo + 2 * H;
  int64_t q = 0;
  for (; q + 2 * V <= ndv; q += 2 * V) {
    Vec a0(A(0)), a1(A(0));
    for (int64_t k = 0; k < W; ++k) {
      Vec g0v = Vec::loadu(gq + q - k), g1v = Vec::loadu(gq + q + V - k);
      if constexpr (kMasked) {
        const A* mk = masks + k * len + s.ilo + 2 * H - k;
        g0v = g0v & Vec::loadu(mk + q);
        g1v = g1v & Vec::loadu(mk + q + V);
      }
      a0 = at::vec::fmadd(wv[k], g0v, a0);
      a1 = at::vec::fmadd(wv[k], g1v, a1);
    }
    a0.store(dxb + q);
    a1.store(dxb + q + V);
  }
  for (; q < ndv; q += V) {
    Vec a0(A(0));
    for (int64_t k = 0; k < W; ++k) {
      Vec g0v = Vec::loadu(gq + q - k);
      if constexpr (kMasked) g0v = g0v & Vec::loadu(masks + k * len + s.ilo + 2 * H - k + q);
      a0 = at::vec::fmadd(wv[k], g0v, a0);
    }
    a0.store(dxb + q);
  }
  if (p.dfinal_states.given()) {
    for (int64_t pos = std::max(s.t0 + s.ilo, L - H); pos < s.t1; ++pos)
      dxb[pos - s.t0 - s.ilo] += dfinal_at<X, A>(p, s, H, L, d, pos);
  }
  if (s.ilo < 0) {
    X* di = ptr<X>(p.dinitial_states) + b * p.dinitial_states.s0 + d * p.dinitial_states.s1;
    IO::store_row(dxb, di, p.dinitial_states.s2, H);
  }
  X* dxr = ptr<X>(p.dx) + b * p.dx.s0 + d * p.dx.s1;
  IO::store_row(dxb - s.ilo, dxr + s.t0 * p.dx.s2, p.dx.s2, n);

  // Partial dweight / dbias over the tokens [t0, t1) of this task.
  const int64_t r = b * job.n_chunks + s.c;
  A* pw = job.part_w + (r * job.D + d) * W;
  if (s.dead) {
    std::fill(pw, pw + W, A(0));
    if (job.part_b) job.part_b[r * job.D + d] = A(0);
    return;
  }
  const int64_t nfull = n / V * V, tail = n - nfull;
  const A* gt = gb + H;
  for (int64_t k = 0; k < W; ++k) {
    const A* xk = xb + k;
    const A* mk = kMasked ? masks + k * len + H : nullptr;
    Vec a0(A(0)), a1(A(0));
    int64_t j = 0;
    // A cut pair's product is selected away whole: its x may be non-finite.
    for (; j + 2 * V <= nfull; j += 2 * V) {
      const Vec g0v = Vec::loadu(gt + j), g1v = Vec::loadu(gt + j + V);
      if constexpr (kMasked) {
        a0 = a0 + ((g0v * Vec::loadu(xk + j)) & Vec::loadu(mk + j));
        a1 = a1 + ((g1v * Vec::loadu(xk + j + V)) & Vec::loadu(mk + j + V));
      } else {
        a0 = at::vec::fmadd(g0v, Vec::loadu(xk + j), a0);
        a1 = at::vec::fmadd(g1v, Vec::loadu(xk + j + V), a1);
      }
    }
    for (; j < nfull; j += V) {
      const Vec g0v = Vec::loadu(gt + j);
      if constexpr (kMasked)
        a0 = a0 + ((g0v * Vec::loadu(xk + j)) & Vec::loadu(mk + j));
      else
        a0 = at::vec::fmadd(g0v, Vec::loadu(xk + j), a0);
    }
    if (tail) {
      const Vec g0v = Vec::loadu(gt + j, tail);
      if constexpr (kMasked)
        a1 = a1 + ((g0v * Vec::loadu(xk + j, tail)) & Vec::loadu(mk + j, tail));
      else
        a1 = at::vec::fmadd(g0v, Vec::loadu(xk + j, tail), a1);
    }
    pw[k] = sum_lanes(a0 + a1);
  }
  if (job.part_b) {
    Vec a0(A(0));
    int64_t j = 0;
    for (; j < nfull; j += V) a0 = a0 + Vec::loadu(gt + j);
    if (tail) a0 = a0 + Vec::loadu(gt + j, tail);
    job.part_b[r * job.D + d] = sum_lanes(a0);
  }
}

// One channel's chunk of rows straight from the tensors, for the common
// case: x, dout and dx contiguous along t, no seq_idx cuts, no
// dinitial_states or dfinal_states in this chunk, W <= kFusedMaxW. One pass
// reads each vector of N tokens of x and dout (its W shifted windows come
// from L1), writes its g to the chunk's buffer and adds to the dweight /
// dbias sums held in registers; a second pass over that buffer writes dx.
// (Computing dx in the first pass made its loads wait for g stores still
// in flight.) time_channel instead copies the rows into buffers first and
// walks them several times.
template <typename X>
struct RowsAhead {
  // The next channel's x (from its t0 - H), dout and dx (from its t0);
  // null when there is none.
  const X* x = nullptr;
  const X* dy = nullptr;
  X* dx = nullptr;
};

template <int WC, bool Silu, typename X, typename A>
void time_fused(const Job<A>& job, const Span& s, int64_t d, const X* dy, A* gb,
                const RowsAhead<X>& ahead) {
  using V = Vectorized<A>;
  using IO = VecIO<X>;
  constexpr int64_t N = V::size();
  constexpr int64_t H = WC - 1;
  static_assert(H <= N, "TimeBufs' slack holds one vector past the chunk and its halo");
  static_assert(kChunkT % N == 0, "only the last chunk ends inside a vector");
  const ConvParams& p = *job.p;
  const int64_t b = s.b, t0 = s.t0;
  const int64_t n = s.t1 - t0, ng = s.te - t0;
  const X* x = ptr<X>(p.x) + b * p.x.s0 + d * p.x.s1;  // x[pos]
  X* dx = ptr<X>(p.dx) + b * p.dx.s0 + d * p.dx.s1 + t0;

  V w[WC];
  for (int k = 0; k < WC; ++k) w[k] = V(job.w[d * WC + k]);
  const V bias(job.bias ? job.bias[d] : A(0));
  // x at positions pos .. pos + N - 1, only those below lim (zeros past
  // it: a value there may be non-finite and must not reach g or dweight),
  // and zeros before position 0 (time_fusable: no initial states here).
  auto xload = [&](int64_t pos, int64_t lim) -> V {
    if (pos >= 0) return pos < lim ? IO::load1(x + pos, std::min(N, lim - pos)) : V(A(0));
    __at_align__ A tmp[N];
    for (int64_t l = 0; l < N; ++l) tmp[l] = pos + l >= 0 && pos + l < lim ? A(x[pos + l]) : A(0);
    return V::loadu(tmp);
  };
  // dx for tokens q .. q + N - 1 (those below n).
  auto dx_at = [&](int64_t q) {
    V a(A(0));
    for (int k = 0; k < WC; ++k) a = at::vec::fmadd(w[k], V::loadu(gb + q + 2 * H - k), a);
    IO::store1(dx + q, a, std::min(N, n - q));
  };

  V dw[WC];
  for (int k = 0; k < WC; ++k) dw[k] = V(A(0));
  V db(A(0));
  const int64_t te = s.te;
  // Tokens j .. j + N - 1. Edge: a vector at the chunk's ends, where x may
  // start before position 0, or tokens reach past te or n.
  constexpr int64_t kLine = 64 / sizeof(X);  // elements per cache line
  auto step = [&]<bool Edge>(int64_t j) __attribute__((always_inline)) {
    const int64_t pos = t0 + j - H;
    if (ahead.x && j % kLine == 0) {
      // The next channel's lines, one per stream per line of this one:
      // paced by the work, a whole channel ahead.
      prefetch_line(ahead.x + j, false);
      prefetch_line(ahead.dy + j, false);
      prefetch_line(ahead.dx + j, true);
    }
    V xk[WC];
    for (int k = 0; k < WC; ++k)
      xk[k] = Edge ? xload(pos + k, te) : IO::load1(x + pos + k, N);
    const V dyv = Edge ? IO::load1(dy + j, std::min(N, ng - j)) : IO::load1(dy + j, N);
    V g = dyv;
    if constexpr (Silu) {
      V pre = bias;
      for (int k = 0; k < WC; ++k) pre = at::vec::fmadd(w[k], xk[k], pre);
      g = dsilu_mul(pre, dyv);
    }
    if constexpr (Edge) g = V::set(V(A(0)), g, std::min(N, ng - j));  // no g past te
    g.store(gb + H + j);
    if (!Edge || j + N <= n) {
      for (int k = 0; k < WC; ++k) dw[k] = at::vec::fmadd(g, xk[k], dw[k]);
      db = db + g;
    } else if (j < n) {
      // Tokens n .. are past the end of the sequence (only the last chunk
      // ends inside a vector, so n == ng) and have g = 0, but their
      // windows reach back into it: x is cut at n, so that 0 * Inf cannot
      // turn a finite sum into NaN.
      for (int k = 0; k < WC; ++k)
        dw[k] = at::vec::fmadd(g, xload(pos + k, t0 + n - H + k), dw[k]);
      db = db + g;
    }
  };
  // Vectors with every x position in [0, te) and every token below n.
  const int64_t j_lo = t0 >= H ? 0 : (H - t0 + N - 1) / N * N;
  const int64_t j_hi = std::max(j_lo, n / N * N);
  int64_t j = 0;
  for (; j < j_lo && j < ng; j += N) step.template operator()<true>(j);
  for (; j < j_hi; j += N) step.template operator()<false>(j);
  for (; j < ng; j += N) step.template operator()<true>(j);
  // g for the H tokens after the last vector: zeros, for the last dx vector.
  std::fill(gb + H + j, gb + 2 * H + j, A(0));
  for (int64_t q = 0; q < n; q += N) dx_at(q);

  const int64_t r = b * job.n_chunks + s.c;
  A* pw = job.part_w + (r * job.D + d) * WC;
  for (int k = 0; k < WC; ++k) pw[k] = sum_lanes(dw[k]);
  if (job.part_b) job.part_b[r * job.D + d] = sum_lanes(db);
}

// Whether time_fused serves channel rows of span s.
template <typename X, typename A>
bool time_fusable(const Job<A>& job, const Span& s) {
  const ConvParams& p = *job.p;
  return job.W <= kFusedMaxW && job.H <= Vectorized<A>::size() && !s.masked && !s.dead &&
         s.ilo == 0 && !(p.initial_states.given() && s.t0 < job.H) && p.x.s2 == 1 &&
         p.dx.s2 == 1 && !(p.dfinal_states.given() && s.t1 > job.L - job.H);
}

template <typename X, typename A>
void time_fused_any(const Job<A>& job, const Span& s, int64_t d, const X* dy, A* gb,
                    const RowsAhead<X>& ahead) {
  auto go = [&]<int WC>() {
    if constexpr (WC - 1 <= Vectorized<A>::size()) {
      if (job.p->silu)
        time_fused<WC, true, X, A>(job, s, d, dy, gb, ahead);
      else
        time_fused<WC, false, X, A>(job, s, d, dy, gb, ahead);
    }
  };
  switch (job.W) {
    case 1: return go.template operator()<1>();
    case 2: return go.template operator()<2>();
    case 3: return go.template operator()<3>();
    case 4: return go.template operator()<4>();
    case 5: return go.template operator()<5>();
    case 6: return go.template operator()<6>();
    case 7: return go.template operator()<7>();
    default: return go.template operator()<8>();
  }
}

template <typename X, typename A>
void prefetch_channel(const Job<A>& job, int64_t b, int64_t c, int64_t d) {
  const ConvParams& p = *job.p;
  const int64_t t0 = c * job.chunk, t1 = std::min(job.L, t0 + job.chunk);
  const int64_t te = std::min(job.L, t1 + job.H), xs = std::max<int64_t>(0, t0 - job.H);
  prefetch_row(ptr<X>(p.x) + b * p.x.s0 + d * p.x.s1 + xs * p.x.s2, p.x.s2, te - xs, false);
  prefetch_row(ptr<X>(p.dout) + b * p.dout.s0 + d * p.dout.s1 + t0 * p.dout.s2, p.dout.s2,
               te - t0, false);
  prefetch_row(ptr<X>(p.dx) + b * p.dx.s0 + d * p.dx.s1 + t0 * p.dx.s2, p.dx.s2, t1 - t0, true);
}

// The block of dout that task (b, c, blk) stages.
template <typename A>
DoutBlock staged_block(const Job<A>& job, int64_t b, int64_t c, int64_t blk) {
  DoutBlock k;
  k.b = b;
  k.d0 = blk * job.block;
  k.nd = std::min(job.block, job.D - k.d0);
  k.t0 = c * job.chunk;
  k.n = std::min(job.L, k.t0 + job.chunk + job.H) - k.t0;
  return k;
}

template <typename X, typename A>
RowsAhead<X> rows_ahead(const Job<A>& job, int64_t b, int64_t c, int64_t d) {
  const ConvParams& p = *job.p;
  const int64_t t0 = c * job.chunk;
  // Positions before 0 are never read: the first line is position 0's.
  const int64_t xs = std::max<int64_t>(0, t0 - job.H);
  return {ptr<X>(p.x) + b * p.x.s0 + d * p.x.s1 + xs,
          ptr<X>(p.dout) + b * p.dout.s0 + d * p.dout.s1 + t0,
          ptr<X>(p.dx) + b * p.dx.s0 + d * p.dx.s1 + t0};
}

template <typename X, typename A>
void run_time_major(const Job<A>& job) {
  const ConvParams& p = *job.p;
  const int64_t tasks = job.B * job.n_chunks * job.n_blocks;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    TimeBufs<A> bufs(job.W, p.seq_idx.given());
    // A fused task's staged dout (Job::stage_dy): channel d0 + i from token t0 at row i.
    constexpr int64_t kStageLd = kChunkT + kFusedMaxW;
    std::vector<X> dys(job.stage_dy ? job.block * kStageLd : 0);
    // task = (b * n_chunks + c) * n_blocks + blk
    auto where = [&](int64_t task, int64_t& b, int64_t& c, int64_t& blk) {
      blk = task % job.n_blocks;
      b = task / job.n_blocks / job.n_chunks;
      c = task / job.n_blocks % job.n_chunks;
    };
    int64_t b, c, blk;
    if (begin < end) {
      where(begin, b, c, blk);
      prefetch_channel<X>(job, b, c, blk * job.block);
    }
    for (int64_t task = begin; task < end; ++task) {
      where(task, b, c, blk);
      const Span s = make_span(job, b, c, bufs.ids);
      if (s.masked) build_masks(s, job.W, bufs);
      const bool fusable = time_fusable<X>(job, s);
      const int64_t d0 = blk * job.block, d1 = std::min(job.D, d0 + job.block);
      const bool staged = fusable && job.stage_dy;
      if (staged)
        stage_transposed(ptr<X>(p.dout) + b * p.dout.s0 + d0 * p.dout.s1 + s.t0 * p.dout.s2,
                         p.dout.s2, p.dout.s1, s.te - s.t0, d1 - d0, dys.data(), kStageLd);
      int64_t tb = b, tc = c, tblk = blk;  // the next task
      if (task + 1 < end) where(task + 1, tb, tc, tblk);
      for (int64_t d = d0; d < d1; ++d) {
        // The next channel: in this task, else the next task's first.
        int64_t nb = b, nc = c, nd = d + 1;
        const bool more = d + 1 < d1 || task + 1 < end;
        if (d + 1 >= d1 && more) nb = tb, nc = tc, nd = tblk * job.block;
        if (job.stage_dy && task + 1 < end)
          prefetch_dout_part<X>(p, staged_block(job, tb, tc, tblk), d - d0, d1 - d0);
        if (fusable) {
          const X* dy = staged ? dys.data() + (d - d0) * kStageLd
                               : ptr<X>(p.dout) + b * p.dout.s0 + d * p.dout.s1 + s.t0;
          RowsAhead<X> ahead;
          if (more) ahead = rows_ahead<X>(job, nb, nc, nd);
          // A staged row is already in cache; the next task's is not staged yet.
          if (more && staged) ahead.dy = d + 1 < d1 ? dy + kStageLd : dy;
          time_fused_any<X, A>(job, s, d, dy, bufs.gb.data(), ahead);
          continue;
        }
        if (more) prefetch_channel<X>(job, nb, nc, nd);
        if (s.masked)
          time_channel<X, A, true>(job, s, d, bufs);
        else
          time_channel<X, A, false>(job, s, d, bufs);
      }
    }
  });
}

// ---------------------------------------------------------------------------
// vectors along channels (channel-last x)
//
// A task is a tile of kChunkC tokens x `span` channels of one batch row
// (cl_span). Most tiles take the fused path (cl_fused_tile): one pass over
// the tokens in groups of kGroupC, each group swept across the tile's
// channels one vector at a time, x and dout read and dx written a whole row
// segment at a time (what the hardware prefetchers follow), with everything
// a channel carries from one group to the next (the last H inputs and g
// values, the dweight / dbias sums) in a small per-task buffer. Tiles with
// seq_idx cuts or padding, dinitial_states or dfinal_states, and widths
// past kFusedMaxW take the buffered path (cl_block), kBlockC channels at a
// time.

constexpr int64_t kGroupC = 4;   // tokens per register pass of the fused path
constexpr int64_t kTasksC = 16;  // channel-last tasks to aim for before splitting D

// A staged dout tile (Job::stage_dy) has kClStageRows rows: the tile's
// tokens, the H after it, and a group more for cl_group's prefetches of the
// next group. Its tasks take at most kClStageSpan channels, so that the
// tile stays in L2 between its copy and its use.
constexpr int64_t kClStageRows = kChunkC + kFusedMaxW + kGroupC;
constexpr int64_t kClStageSpan = 256;

// Elements between a staged tile's rows: nd rounded up to a block, plus a
// block, so that the rows a transposed block writes do not all fall into
// the same L1 sets.
inline int64_t cl_stage_ld(int64_t nd) {
  return (nd + kStageB - 1) / kStageB * kStageB + kStageB;
}

// Channels per channel-last task: whole rows (a tile is then one contiguous
// stretch of x, dout and dx), unless that leaves fewer than kTasksC tasks to
// share out. The split depends on the shape alone and changes no value:
// channels never meet.
inline int64_t cl_span(int64_t B, int64_t n_chunks, int64_t D) {
  const int64_t want = (kTasksC + B * n_chunks - 1) / (B * n_chunks);
  const int64_t spans = std::clamp<int64_t>(want, 1, std::max<int64_t>(1, D / 256));
  const int64_t span = (D + spans - 1) / spans;
  return (span + kBlockC - 1) / kBlockC * kBlockC;
}

template <typename A>
struct ClBlockBufs {
  std::vector<A> xb, gb, wl, row;
  std::vector<int32_t> ids;
  explicit ClBlockBufs(int64_t H)
      : xb((kChunkC + 2 * H + 1) * kBlockC), gb(xb.size()), wl(kMaxWidthCpu * kBlockC),
        row(kBlockC), ids(kChunkC + 2 * H + 1) {}
};

// Channels d0 .. d0 + nd - 1 (nd <= kBlockC) of the tile s, through buffers
// of rows [token][lane].
template <typename X, typename A>
void cl_block(const Job<A>& job, const Span& s, int64_t d0, int64_t nd, ClBlockBufs<A>& bf) {
  using Vec = Vectorized<A>;
  using IO = VecIO<X>;
  static_assert(std::is_same_v<typename IO::A, A>);
  constexpr int64_t V = Vec::size();
  constexpr int64_t C = kBlockC;
  constexpr int64_t NV = C / V;
  static_assert(C % V == 0, "kBlockC must be a multiple of the vector size");
  const ConvParams& p = *job.p;
  const int64_t W = job.W, H = job.H, L = job.L, D = job.D;
  std::vector<A>& xb = bf.xb;
  std::vector<A>& gb = bf.gb;
  std::vector<A>& wl = bf.wl;
  std::vector<A>& row = bf.row;
  const int64_t b = s.b;
  const int64_t n = s.t1 - s.t0, ng = s.te - s.t0, nx = ng + H;
  const int32_t* id = s.ids;  // id[r]: position t0 - H + r

  // taps, one row of C lanes per k (zero beyond nd)
  std::fill(wl.begin(), wl.end(), A(0));
  for (int64_t l = 0; l < nd; ++l)
    for (int64_t k = 0; k < W; ++k) wl[k * C + l] = job.w[(d0 + l) * W + k];
  std::array<Vec, NV> bias;
  for (int64_t v = 0; v < NV; ++v) {
    __at_align__ A tmp[V];
    for (int64_t l = 0; l < V; ++l) {
      const int64_t lane = v * V + l;
      tmp[l] = (job.bias && lane < nd) ? job.bias[d0 + lane] : A(0);
    }
    bias[v] = Vec::loadu(tmp);
  }

  // g rows: gb row H + j is token t0 + j; rows outside [H, H + ng) are zero.
  std::fill(gb.begin(), gb.end(), A(0));
  if (!s.dead) {
    // xb row r is input position t0 - H + r.
    for (int64_t r = 0; r < nx; ++r) {
      const int64_t pos = s.t0 - H + r;
      A* dst = xb.data() + r * C;
      if (pos + kAheadC >= 0 && pos + kAheadC < s.te) {
        const int64_t ahead = pos + kAheadC;
        prefetch_row(ptr<X>(p.x) + b * p.x.s0 + ahead * p.x.s2 + d0 * p.x.s1, p.x.s1, nd,
                     false);
        if (ahead >= s.t0)
          prefetch_row(ptr<X>(p.dout) + b * p.dout.s0 + ahead * p.dout.s2 + d0 * p.dout.s1,
                       p.dout.s1, nd, false);
      }
      if (pos >= 0) {
        const X* src = ptr<X>(p.x) + b * p.x.s0 + pos * p.x.s2 + d0 * p.x.s1;
        IO::load_row(src, p.x.s1, dst, nd);
      } else if (p.initial_states.given()) {
        const X* src = ptr<X>(p.initial_states) + b * p.initial_states.s0 +
                       d0 * p.initial_states.s1 + (H + pos) * p.initial_states.s2;
        IO::load_row(src, p.initial_states.s1, dst, nd);
      } else {
        std::fill(dst, dst + nd, A(0));
      }
      std::fill(dst + nd, dst + C, A(0));
    }
    for (int64_t j = 0; j < ng; ++j) {
      const int64_t t = s.t0 + j;
      if (s.masked && id[j + H] < 0) continue;  // padding token: g = 0
      const X* src = ptr<X>(p.dout) + b * p.dout.s0 + t * p.dout.s2 + d0 * p.dout.s1;
      IO::load_row(src, p.dout.s1, row.data(), nd);
      std::fill(row.begin() + nd, row.end(), A(0));
      A* g = gb.data() + (H + j) * C;
      if (!p.silu) {
        std::memcpy(g, row.data(), C * sizeof(A));
        continue;
      }
      std::array<Vec, NV> acc = bias;
      for (int64_t k = 0; k < W; ++k) {
        if (s.masked && id[j + k] != id[j + H]) continue;
        const A* xr = xb.data() + (j + k) * C;
        const A* wk = wl.data() + k * C;
        for (int64_t v = 0; v < NV; ++v)
          acc[v] = at::vec::fmadd(Vec::loadu(wk + v * V), Vec::loadu(xr + v * V), acc[v]);
      }
      for (int64_t v = 0; v < NV; ++v)
        dsilu_mul(acc[v], Vec::loadu(row.data() + v * V)).store(g + v * V);
    }
  }

  // dxin rows for positions t0 + i, i in [ilo, n).
  for (int64_t i = s.ilo; i < n; ++i) {
    const int64_t pos = s.t0 + i;
    if (pos >= 0 && i + kAheadC < n)
      prefetch_row(ptr<X>(p.dx) + b * p.dx.s0 + (pos + kAheadC) * p.dx.s2 + d0 * p.dx.s1,
                   p.dx.s1, nd, true);
    std::array<Vec, NV> acc;
    acc.fill(Vec(A(0)));
    if (!s.dead) {
      for (int64_t k = 0; k < W; ++k) {
        // token pos + H - k is gb row i + 2H - k (zero past te)
        if (i + H - k >= ng) continue;
        if (s.masked && id[i + H] != id[i + 2 * H - k]) continue;
        const A* gr = gb.data() + (i + 2 * H - k) * C;
        const A* wk = wl.data() + k * C;
        for (int64_t v = 0; v < NV; ++v)
          acc[v] = at::vec::fmadd(Vec::loadu(wk + v * V), Vec::loadu(gr + v * V), acc[v]);
      }
    }
    for (int64_t v = 0; v < NV; ++v) acc[v].store(row.data() + v * V);
    if (p.dfinal_states.given() && pos >= L - H) {
      for (int64_t l = 0; l < nd; ++l) row[l] += dfinal_at<X, A>(p, s, H, L, d0 + l, pos);
    }
    if (pos >= 0) {
      X* dst = ptr<X>(p.dx) + b * p.dx.s0 + pos * p.dx.s2 + d0 * p.dx.s1;
      IO::store_row(row.data(), dst, p.dx.s1, nd);
    } else {
      X* dst = ptr<X>(p.dinitial_states) + b * p.dinitial_states.s0 +
               d0 * p.dinitial_states.s1 + (H + pos) * p.dinitial_states.s2;
      IO::store_row(row.data(), dst, p.dinitial_states.s1, nd);
    }
  }

  // partial dweight / dbias over tokens [t0, t1)
  const int64_t r = b * job.n_chunks + s.c;
  for (int64_t k = 0; k < W; ++k) {
    std::array<Vec, NV> acc;
    acc.fill(Vec(A(0)));
    for (int64_t j = 0; j < n && !s.dead; ++j) {
      // cut pairs and padding tokens are skipped, not multiplied by 0
      if (s.masked && (id[j + H] < 0 || id[j + k] != id[j + H])) continue;
      const A* g = gb.data() + (H + j) * C;
      const A* xr = xb.data() + (j + k) * C;
      for (int64_t v = 0; v < NV; ++v)
        acc[v] = at::vec::fmadd(Vec::loadu(g + v * V), Vec::loadu(xr + v * V), acc[v]);
    }
    for (int64_t v = 0; v < NV; ++v) acc[v].store(row.data() + v * V);
    for (int64_t l = 0; l < nd; ++l) job.part_w[(r * D + d0 + l) * W + k] = row[l];
  }
  if (job.part_b) {
    std::array<Vec, NV> acc;
    acc.fill(Vec(A(0)));
    for (int64_t j = 0; j < n && !s.dead; ++j) {
      const A* g = gb.data() + (H + j) * C;
      for (int64_t v = 0; v < NV; ++v) acc[v] = acc[v] + Vec::loadu(g + v * V);
    }
    for (int64_t v = 0; v < NV; ++v) acc[v].store(row.data() + v * V);
    for (int64_t l = 0; l < nd; ++l) job.part_b[r * D + d0 + l] = row[l];
  }
}

// Where a fused tile reads and writes: channel j of token t0 + t at x[t * xs + j],
// dout[t * ys + j], dx[t * dxs + j] (the tile's first token at t = 0, its
// first channel at j = 0).
template <typename X, typename A>
struct ClTile {
  const X* x;
  const X* dy;
  X* dx;
  int64_t xs, ys, dxs;
  int64_t nd;      // channels in the tile
  const A* taps;   // per vector of channels: taps 0 .. W-1, then the bias (V lanes each)
  A* state;        // per vector of channels: ClState slots (V lanes each)
};

// A channel vector's slots in ClTile::state: x at the H positions before the
// group, g at the H tokens before it, the W dweight sums, the dbias sum.
template <int WC>
struct ClState {
  static constexpr int H = WC - 1;
  static constexpr int kX = 0, kG = H, kDw = 2 * H, kDb = 2 * H + WC, kSlots = 2 * H + WC + 1;
};

// Tokens t .. t + T - 1 of a tile, every channel. Token i (with g, dout and
// x at t + i when i < nx, g = 0 past the end of the sequence) adds to the
// dweight / dbias sums when i < ncore and writes dx at t + i - H when i >=
// skip: dx[p] = sum_k w[k] g[p + H - k] needs g up to p + H, so dx trails
// g by H tokens. Full: a group inside the tile (skip 0, ncore = nx = T).
template <int WC, int T, bool Silu, bool Full, typename X, typename A>
void cl_group(const ClTile<X, A>& g, int64_t t, int skip, int ncore, int nx, bool ahead = false) {
  using V = Vectorized<A>;
  using IO = VecIO<X>;
  using S = ClState<WC>;
  constexpr int64_t N = V::size();
  constexpr int H = S::H;
  // Vectors per cache line of x (1 or more).
  constexpr int64_t kLine = std::max<int64_t>(1, 64 / int64_t(N * sizeof(X)));
  for (int64_t j = 0; j < g.nd; j += N) {
    const int64_t cnt = std::min(N, g.nd - j);
    if (ahead && (j / N) % kLine == 0) {
      // The next group's x and dout, into L2: rows a few KiB long, read
      // T at a time, share pages in a way the hardware prefetchers miss.
      // For 16-bit x also its dx rows (H behind), to write: on Zen 4 that
      // made bf16 faster and fp32 slower.
      for (int i = 0; i < T; ++i) {
        __builtin_prefetch(g.x + (t + T + i) * g.xs + j, 0, 2);  // locality 2: L2
        __builtin_prefetch(g.dy + (t + T + i) * g.ys + j, 0, 2);
        if constexpr (sizeof(X) == 2) prefetch_line(g.dx + (t + T + i - H) * g.dxs + j, true);
      }
    }
    A* st = g.state + j * S::kSlots;
    const A* tp = g.taps + j * (WC + 1);
    V w[WC];
    for (int k = 0; k < WC; ++k) w[k] = V::loadu(tp + k * N);
    V xw[H + T], gw[H + T];  // x at position t - H + i, g at token t - H + i
    for (int i = 0; i < H; ++i) {
      xw[i] = V::loadu(st + (S::kX + i) * N);
      gw[i] = V::loadu(st + (S::kG + i) * N);
    }
    V dw[WC];
    for (int k = 0; k < WC; ++k) dw[k] = V::loadu(st + (S::kDw + k) * N);
    V db = V::loadu(st + S::kDb * N);
    // Unrolled, xw and gw live in registers. GCC kept this loop rolled in
    // the 16-bit instances, with the two arrays on the stack: every g and
    // x went through a store and a reload.
#pragma GCC unroll 8
    for (int i = 0; i < T; ++i) {
      if (Full || i < nx) {
        xw[H + i] = IO::load1(g.x + (t + i) * g.xs + j, cnt);
        const V dy = IO::load1(g.dy + (t + i) * g.ys + j, cnt);
        if constexpr (Silu) {
          V pre = V::loadu(tp + WC * N);
          for (int k = 0; k < WC; ++k) pre = at::vec::fmadd(w[k], xw[i + k], pre);
          gw[H + i] = dsilu_mul(pre, dy);
        } else {
          gw[H + i] = dy;
        }
      } else {
        xw[H + i] = V(A(0));
        gw[H + i] = V(A(0));
      }
      if (Full || i < ncore) {
        for (int k = 0; k < WC; ++k) dw[k] = at::vec::fmadd(gw[H + i], xw[i + k], dw[k]);
        db = db + gw[H + i];
      }
      if (Full || i >= skip) {
        V a(A(0));
        for (int k = 0; k < WC; ++k) a = at::vec::fmadd(w[k], gw[i + H - k], a);
        IO::store1(g.dx + (t + i - H) * g.dxs + j, a, cnt);
      }
    }
    for (int i = 0; i < H; ++i) {
      xw[T + i].store(st + (S::kX + i) * N);
      gw[T + i].store(st + (S::kG + i) * N);
    }
    for (int k = 0; k < WC; ++k) dw[k].store(st + (S::kDw + k) * N);
    db.store(st + S::kDb * N);
  }
}

// Whether the fused path serves tile s: it knows no seq_idx cuts, and the
// tiles that write dinitial_states or take dfinal_states go through cl_block.
template <typename A>
bool cl_fusable(const Job<A>& job, const Span& s) {
  const ConvParams& p = *job.p;
  return job.W <= kFusedMaxW && !s.masked && !s.dead && s.ilo == 0 && p.dx.s1 == 1 &&
         !(p.dfinal_states.given() && s.t1 > job.L - job.H);
}

// Tile s, channels d0 .. d0 + nd - 1, in one pass over its tokens. With
// Job::stage_dy its dout is first copied into dyb, kClStageRows rows of nd.
template <int WC, bool Silu, typename X, typename A>
void cl_fused_tile(const Job<A>& job, const Span& s, int64_t d0, int64_t nd, const A* taps,
                   A* state, X* dyb, const DoutBlock& next) {
  using S = ClState<WC>;
  constexpr int64_t N = Vectorized<A>::size();
  constexpr int H = S::H;
  const ConvParams& p = *job.p;
  const int64_t b = s.b, t0 = s.t0, t1 = s.t1, L = job.L, D = job.D;
  const int64_t nv = (nd + N - 1) / N;
  const X* dy = ptr<X>(p.dout) + b * p.dout.s0 + d0 * p.dout.s1 + t0 * p.dout.s2;
  const int64_t ld = cl_stage_ld(nd);
  if (job.stage_dy) stage_transposed(dy, p.dout.s1, p.dout.s2, nd, s.te - t0, dyb, ld);
  const ClTile<X, A> g{ptr<X>(p.x) + b * p.x.s0 + t0 * p.x.s2 + d0,
                       job.stage_dy ? dyb : dy,
                       ptr<X>(p.dx) + b * p.dx.s0 + t0 * p.dx.s2 + d0,
                       p.x.s2, job.stage_dy ? ld : p.dout.s2, p.dx.s2, nd,
                       taps + d0 * (WC + 1), state};
  // Prime: x at the H positions before t0 (the initial state or zeros before
  // position 0), g and the sums zero. Lanes past nd stay zero throughout.
  std::fill(state, state + nv * N * S::kSlots, A(0));
  for (int i = 0; i < H; ++i) {
    const int64_t pos = t0 - H + i;
    for (int64_t l = 0; l < nd; ++l) {
      A v = A(0);
      if (pos >= 0) {
        v = A(g.x[(pos - t0) * g.xs + l]);
      } else if (p.initial_states.given()) {
        v = A(ptr<X>(p.initial_states)[b * p.initial_states.s0 + (d0 + l) * p.initial_states.s1 +
                                       (H + pos) * p.initial_states.s2]);
      }
      state[(l / N) * N * S::kSlots + (S::kX + i) * N + l % N] = v;
    }
  }
  constexpr int G = kGroupC;
  const int64_t parts = (t1 - t0 + G - 1) / G;
  for (int64_t t = t0; t < t1;) {
    prefetch_dout_part<X>(p, next, (t - t0) / G, parts);
    const int skip = int(std::clamp<int64_t>(t0 + H - t, 0, G));
    if (t1 - t >= G) {
      if (skip == 0)
        cl_group<WC, G, Silu, true>(g, t - t0, 0, G, G, t + 2 * G <= L);
      else
        cl_group<WC, G, Silu, false>(g, t - t0, skip, G, G);
      t += G;
    } else {
      cl_group<WC, 1, Silu, false>(g, t - t0, skip, 1, 1);
      t += 1;
    }
  }
  // The H tokens after the tile: their g completes the tile's last dx rows.
  if constexpr (H > 0) {
    const int skip = int(std::clamp<int64_t>(t0 + H - t1, 0, H));
    const int nx = int(std::clamp<int64_t>(L - t1, 0, H));
    cl_group<WC, H, Silu, false>(g, t1 - t0, skip, 0, nx);
  }
  // This tile's partial dweight / dbias.
  const int64_t r = b * job.n_chunks + s.c;
  for (int64_t l = 0; l < nd; ++l) {
    const A* st = state + (l / N) * N * S::kSlots + l % N;
    for (int k = 0; k < WC; ++k) job.part_w[(r * D + d0 + l) * WC + k] = st[(S::kDw + k) * N];
    if (job.part_b) job.part_b[r * D + d0 + l] = st[S::kDb * N];
  }
}

template <typename X, typename A>
void run_channel_last(const Job<A>& job) {
  constexpr int64_t N = Vectorized<A>::size();
  const ConvParams& p = *job.p;
  const int64_t W = job.W, D = job.D, span = job.block;
  const int64_t tasks = job.B * job.n_chunks * job.n_blocks;
  // Taps and bias for the fused path, per vector of N channels: W + 1 rows of N lanes.
  const int64_t dpad = (D + span - 1) / span * span;
  std::vector<A> taps(W <= kFusedMaxW ? dpad * (W + 1) : 0, A(0));
  if (W <= kFusedMaxW) {
    for (int64_t d = 0; d < D; ++d) {
      A* tv = taps.data() + (d / N) * N * (W + 1) + d % N;
      for (int64_t k = 0; k < W; ++k) tv[k * N] = job.w[d * W + k];
      tv[W * N] = job.bias ? job.bias[d] : A(0);
    }
  }
  auto fused = [&](const Span& s, int64_t d0, int64_t nd, A* state, X* dyb,
                   const DoutBlock& next) {
    auto go = [&]<int WC>() {
      if (p.silu)
        cl_fused_tile<WC, true, X, A>(job, s, d0, nd, taps.data(), state, dyb, next);
      else
        cl_fused_tile<WC, false, X, A>(job, s, d0, nd, taps.data(), state, dyb, next);
    };
    switch (W) {
      case 1: return go.template operator()<1>();
      case 2: return go.template operator()<2>();
      case 3: return go.template operator()<3>();
      case 4: return go.template operator()<4>();
      case 5: return go.template operator()<5>();
      case 6: return go.template operator()<6>();
      case 7: return go.template operator()<7>();
      default: return go.template operator()<8>();
    }
  };
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    ClBlockBufs<A> bf(job.H);
    // ClState<W>::kSlots per channel
    std::vector<A> state(W <= kFusedMaxW ? span * (3 * W - 1) : 0);
    std::vector<X> dyb(W <= kFusedMaxW && job.stage_dy ? cl_stage_ld(span) * kClStageRows : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task % job.n_blocks;
      const int64_t bc = task / job.n_blocks;
      const Span s = make_span(job, bc / job.n_chunks, bc % job.n_chunks, bf.ids);
      const int64_t d0 = blk * span, nd = std::min(span, D - d0);
      if (cl_fusable(job, s)) {
        DoutBlock next;
        if (job.stage_dy && task + 1 < end) {
          const int64_t nbc = (task + 1) / job.n_blocks;
          next = staged_block(job, nbc / job.n_chunks, nbc % job.n_chunks,
                              (task + 1) % job.n_blocks);
        }
        fused(s, d0, nd, state.data(), dyb.data(), next);
      } else {
        for (int64_t c0 = d0; c0 < d0 + nd; c0 += kBlockC)
          cl_block<X, A>(job, s, c0, std::min(kBlockC, d0 + nd - c0), bf);
      }
    }
  });
}

// ---------------------------------------------------------------------------

template <typename A>
A weight_at(const ConvParams& p, const Strided& v, int64_t off) {
  switch (p.weight_dtype) {
    case DType::Float32: return A(static_cast<const float*>(v.data)[off]);
    case DType::Float16: return A(static_cast<const c10::Half*>(v.data)[off]);
    case DType::BFloat16: return A(static_cast<const c10::BFloat16*>(v.data)[off]);
    case DType::Float64: return A(static_cast<const double*>(v.data)[off]);
  }
  return A(0);
}

// L == 0: no tokens; final_states were the initial states (or zeros).
template <typename X>
void bwd_empty(const ConvParams& p) {
  if (!p.dinitial_states.given()) return;
  const int64_t H = p.width - 1, D = p.dim;
  at::parallel_for(0, p.batch * D, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / D, d = row % D;
      X* di = ptr<X>(p.dinitial_states) + b * p.dinitial_states.s0 + d * p.dinitial_states.s1;
      const X* df = p.dfinal_states.given()
                        ? ptr<X>(p.dfinal_states) + b * p.dfinal_states.s0 + d * p.dfinal_states.s1
                        : nullptr;
      for (int64_t j = 0; j < H; ++j)
        di[j * p.dinitial_states.s2] = df ? df[j * p.dfinal_states.s2] : X(0);
    }
  });
}

template <typename X>
void bwd_typed(const ConvParams& p) {
  using A = acc_t<X>;
  if (p.seqlen == 0) return bwd_empty<X>(p);
  Job<A> job;
  job.p = &p;
  job.B = p.batch;
  job.D = p.dim;
  job.L = p.seqlen;
  job.W = p.width;
  job.H = p.width - 1;
  const int64_t D = job.D, W = job.W;

  std::vector<A> w(D * W), bias(p.bias.given() ? D : 0);
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t k = 0; k < W; ++k)
      w[d * W + k] = weight_at<A>(p, p.weight, d * p.weight.s0 + k * p.weight.s1);
    if (p.bias.given()) bias[d] = weight_at<A>(p, p.bias, d * p.bias.s0);
  }
  job.w = w.data();
  job.bias = p.bias.given() ? bias.data() : nullptr;

  const bool channel_last = p.x.s1 == 1 && p.x.s2 != 1 && D > 1;
  job.stage_dy = channel_last ? p.dout.s1 != 1 : p.dout.s2 != 1;
  job.chunk = channel_last ? kChunkC : kChunkT;
  job.n_chunks = (job.L + job.chunk - 1) / job.chunk;
  // A staged task along t takes a cache line of channels: each line of dout
  // it reads is then read once.
  const int64_t line = std::max<int64_t>(kGroupT, 64 / sizeof(X));
  if (channel_last)
    job.block = job.stage_dy ? std::min(kClStageSpan, cl_span(job.B, job.n_chunks, D))
                             : cl_span(job.B, job.n_chunks, D);
  else
    job.block = job.stage_dy ? line : kGroupT;
  job.n_blocks = (D + job.block - 1) / job.block;
  const int64_t R = job.B * job.n_chunks;
  std::vector<A> part_w(R * D * W), part_b(p.dbias_acc ? R * D : 0);
  job.part_w = part_w.data();
  job.part_b = p.dbias_acc ? part_b.data() : nullptr;

  if (channel_last)
    run_channel_last<X, A>(job);
  else
    run_time_major<X, A>(job);

  // Sum the partials over (b, chunk) in index order, one channel per lane of
  // work: the order never depends on how channels are split among threads.
  A* dw = static_cast<A*>(p.dweight_acc);
  A* db = static_cast<A*>(p.dbias_acc);
  at::parallel_for(0, D, 64, [&](int64_t d0, int64_t d1) {
    for (int64_t r = 0; r < R; ++r) {
      const A* src = job.part_w + r * D * W;
      for (int64_t i = d0 * W; i < d1 * W; ++i) dw[i] += src[i];
      if (db) {
        const A* srcb = job.part_b + r * D;
        for (int64_t d = d0; d < d1; ++d) db[d] += srcb[d];
      }
    }
  });
}

}  // namespace bwd_impl

inline void bwd(const ConvParams& p) {
  switch (p.x_dtype) {
    case DType::Float32: return bwd_impl::bwd_typed<float>(p);
    case DType::Float16: return bwd_impl::bwd_typed<c10::Half>(p);
    case DType::BFloat16: return bwd_impl::bwd_typed<c10::BFloat16>(p);
    case DType::Float64: return bwd_impl::bwd_typed<double>(p);
  }
}

}  // namespace causal_conv1d::cpu::CPU_CAPABILITY
