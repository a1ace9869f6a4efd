// One (b, d) row of the convolution, read element by element through its
// strides: the semantics of the forward and its gradient in their plainest
// form. The generic kernels (any strides), the final-state and
// initial-state-gradient kernels use it directly; the fast paths must agree
// with it.
#pragma once

#include "common.cuh"

namespace causal_conv1d::cuda {

template <typename X>
struct Row {
  const X* x = nullptr;       // x[b, d, :], time stride xs
  int64_t xs = 0;
  const X* init = nullptr;    // initial_states[b, d, :] or nullptr
  int64_t is = 0;
  const int32_t* seq = nullptr;  // seq_idx[b, :] or nullptr
  int64_t ss = 0;
  const X* dout = nullptr;    // backward only: dout[b, d, :]
  int64_t dos = 0;
  int64_t L = 0, W = 0, d = 0;
  int32_t first_id = 0, last_id = 0;

  __device__ int32_t id(int64_t t) const { return seq ? seq[t * ss] : 0; }

  // Segment of input position pos; the initial state (pos < 0) belongs to
  // the first segment.
  __device__ int32_t id_in(int64_t pos) const { return pos >= 0 ? id(pos) : first_id; }

  // The input at position pos (-(W-1) <= pos < L) as seen by a token of
  // segment tok: x, the initial state, or 0 across a segment boundary.
  __device__ float in(int64_t pos, int32_t tok) const {
    if (seq && id_in(pos) != tok) return 0.f;
    if (pos >= 0) return to_f(x[pos * xs]);
    return init ? to_f(init[(W - 1 + pos) * is]) : 0.f;
  }

  // Same, as the stored element (final states are exact copies of inputs).
  __device__ X in_raw(int64_t pos, int32_t tok) const {
    if (seq && id_in(pos) != tok) return from_f<X>(0.f);
    if (pos >= 0) return x[pos * xs];
    return init ? init[(W - 1 + pos) * is] : from_f<X>(0.f);
  }
};

// The x window of one rows-kernel thread (x.s2 == 1): win[i] = input at
// position t0 - O + i for i < Q * E, read in E-element chunks: one aligned
// vector load where a chunk lies inside [0, L) and vec_ok says loads may be
// vectors, single elements at the edges. Chunks the thread does not need
// (needed(first position) is false) and positions outside [0, L) read as 0;
// positions in [-(W-1), 0) then come from the initial state when given.
template <int Q, int E, typename X, typename Needed>
__device__ inline void load_row_window(float* win, const ConvParams& p, const X* xr, int64_t b,
                                       int64_t d, int64_t t0, int O, int W, bool vec_ok,
                                       Needed needed) {
  using V = Pack<X, E>;
  const int64_t L = p.seqlen;
#pragma unroll
  for (int q = 0; q < Q; ++q) {
    const int64_t base = t0 - O + q * E;
    const bool want = needed(base);
    if (want && vec_ok && base >= 0 && base + E <= L) {
      const V v = load_pack<X, E>(xr + base);
#pragma unroll
      for (int e = 0; e < E; ++e) win[q * E + e] = to_f(v.v[e]);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int64_t pos = base + e;
        win[q * E + e] = (want && pos >= 0 && pos < L) ? to_f(xr[pos]) : 0.f;
      }
    }
  }
  if (p.initial_states.data != nullptr && t0 < W - 1) {
    const X* ir = ptr<const X>(p.initial_states) + b * p.initial_states.s0 + d * p.initial_states.s1;
    for (int i = 0; i < O; ++i) {
      const int64_t pos = t0 - O + i;
      if (pos < 0 && pos >= -(W - 1)) win[i] = to_f(ir[(W - 1 + pos) * p.initial_states.s2]);
    }
  }
}

// Positions per lane of the rows_tiled kernels on rows long enough (shorter
// rows get one vector per lane). More keeps more bytes in flight per thread
// and spreads the per-tile work thinner, at the cost of registers
// (occupancy); 16 was the fastest on the GPUs measured, for the forward and
// the backward alike (the measurements are in the commit history).
constexpr int kFwdTilePositions = 16;
constexpr int kBwdTilePositions = 16;

// 16-byte vectors per lane for `positions` positions of elem_bytes each.
inline constexpr int tile_vectors(int positions, int elem_bytes) {
  return positions * elem_bytes / 16 > 1 ? positions * elem_bytes / 16 : 1;
}

// How many of the n positions from pos are before L (0 to n): a 32-bit
// bound for per-element tests inside a vector.
__device__ __forceinline__ int positions_before(int64_t L, int64_t pos, int n) {
  const int64_t room = L - pos;
  return room >= n ? n : room > 0 ? static_cast<int>(room) : 0;
}

// Element i of a (B, D, L) walk in the generic kernels: t fastest (x.s2 <=
// x.s1: consecutive threads read consecutive positions of a row) or d
// fastest (channel-last-like strides).
struct ElementAt {
  int64_t b, d, t;
};
__device__ inline ElementAt element_at(int64_t i, int64_t D, int64_t L, bool t_fastest) {
  if (t_fastest) {
    const int64_t r = i / L;
    return ElementAt{r / D, r % D, i % L};
  }
  const int64_t r = i / D;
  return ElementAt{r / L, i % D, r % L};
}

// Row (b, d) and first position of warp tile wg of a rows_tiled launch.
struct TileAt {
  int64_t b, d, t0;
};
__device__ inline TileAt tile_at(int64_t wg, int64_t tiles, int64_t D, int64_t len) {
  const int64_t row = wg / tiles;
  const int64_t b = row / D;
  return TileAt{b, row - b * D, (wg - row * tiles) * len};
}

// The rows_tiled kernels' walk over warp tiles: grid-stride over `total`
// tiles of `len` positions, `tiles` to a row; body(at) loads, computes and
// stores one. (No register prefetch of the next tile's loads: the registers
// it holds halve the resident warps, which costs more than it hides; fwd.cu's
// rows_piped prefetches through shared memory instead.)
template <typename Body>
__device__ __forceinline__ void for_each_tile(int64_t total, int64_t tiles, int64_t D, int64_t len,
                                              Body&& body) {
  for (int64_t wg = global_thread() / kWarp; wg < total; wg += grid_threads() / kWarp)
    body(tile_at(wg, tiles, D, len));
}

// Stores vals (converted to X) at positions t0 .. t0+E-1 of row r (time
// stride s), those < L: one 16-byte store when `vec` (s == 1 and the row
// aligned) and all E are inside, else element by element.
template <typename X, int E>
__device__ __forceinline__ void store_chunk(X* r, int64_t t0, int64_t L, int64_t s, bool vec,
                                            const float (&vals)[E]) {
  Pack<X, E> o;
#pragma unroll
  for (int e = 0; e < E; ++e) o.v[e] = from_f<X>(vals[e]);
  if (vec && t0 + E <= L) {
    store_pack(r + t0, o);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (t0 + e < L) r[(t0 + e) * s] = o.v[e];
  }
}

// A warp's tile of one row (x.s2 == 1, rows 16-byte aligned): 32 * C
// consecutive vectors of E = 16 / sizeof(X) elements from position t0. Lane l
// holds vectors l, l + 32, ..., l + 32 (C - 1): each warp-wide load or store
// covers 512 contiguous bytes and a lane has its C loads in flight at once.
// Per element the index math is a shift; per tile it is one division.
template <typename X, int C>
struct WarpTile {
  static constexpr int E = kVec16<X>;
  static constexpr int kLen = kWarp * C * E;  // positions per tile
  float v[C][E];                              // v[q][e]: position at(q) + e
  Pack<X, E> raw[C];                          // fetched, not yet unpacked

  int64_t t0 = 0;
  int lane = 0;

  __device__ int64_t at(int q) const { return position(t0, q); }
  __device__ int64_t position(int64_t start, int q) const {
    return start + (static_cast<int64_t>(q) * kWarp + lane) * E;
  }

  // raw from the tile at `start` of row r (r[pos], pos < L); positions >= L
  // read as 0. The loads are not waited for until unpack().
  __device__ void fetch(const X* r, int64_t start, int64_t L) {
#pragma unroll
    for (int q = 0; q < C; ++q) {
      const int64_t pos = position(start, q);
      if (pos + E <= L) {
        raw[q] = load_pack<X, E>(r + pos);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) raw[q].v[e] = pos + e < L ? r[pos + e] : from_f<X>(0.f);
      }
    }
  }

  // v from raw, which was fetched for the tile at `start`.
  __device__ void unpack(int64_t start) {
    t0 = start;
#pragma unroll
    for (int q = 0; q < C; ++q)
#pragma unroll
      for (int e = 0; e < E; ++e) v[q][e] = to_f(raw[q].v[e]);
  }

  // Stores vals (converted to X) at the tile's positions < L of row r.
  __device__ void store(X* r, int64_t L, const float (&vals)[C][E]) const {
#pragma unroll
    for (int q = 0; q < C; ++q) store_vector(r, L, q, vals[q]);
  }

  // Same for vector q alone.
  __device__ void store_vector(X* r, int64_t L, int q, const float (&vals)[E]) const {
    store_chunk(r, at(q), L, 1, true, vals);
  }
};

// Neighbours across lanes of per-position values laid out as a WarpTile's
// (v[q][e] at position at(q) + e). All 32 lanes must call these together
// (warp shuffles); H <= E.
//   lanes_before: out[i] = the value at position at(q) - H + i: lane l-1's
//     last H, for lane 0 lane 31's vector q-1, or `head` (lane 0, q == 0).
//   lanes_after: out[i] = the value at position at(q) + E + i: lane l+1's
//     first H, for lane 31 lane 0's vector q+1, or `tail` (lane 31, q == C-1).
template <int H, int C, int E>
__device__ inline void lanes_before(const float (&v)[C][E], int q, int lane, const float (&head)[H],
                                    float (&out)[H]) {
#pragma unroll
  for (int i = 0; i < H; ++i) {
    const float up = lane_up(v[q][E - H + i], 1);
    const float wrap = q > 0 ? lane_from(v[q > 0 ? q - 1 : 0][E - H + i], kWarp - 1) : head[i];
    out[i] = lane == 0 ? wrap : up;
  }
}

template <int H, int C, int E>
__device__ inline void lanes_after(const float (&v)[C][E], int q, int lane, const float (&tail)[H],
                                   float (&out)[H]) {
#pragma unroll
  for (int i = 0; i < H; ++i) {
    const float down = lane_down(v[q][i], 1);
    const float wrap = q + 1 < C ? lane_from(v[q + 1 < C ? q + 1 : q][i], 0) : tail[i];
    out[i] = lane == kWarp - 1 ? wrap : down;
  }
}

// What a rows_tiled warp reads for a tile of row (b, d) from position t0
// besides the tile's vectors: the row's taps and bias, the H = kW-1 inputs
// before the tile (x, the initial state before position 0, zeros without
// one; lane 0's head) and, with kTail (the backward), x and dout at the H
// positions after it (lane 31's tail; zeros past L). fetch() only issues the
// loads (every lane the same addresses, one broadcast request each) and
// unpack() converts them, so that they and the tile's vectors share one
// memory round trip instead of adding one each.
template <typename X, int kW, bool kTail>
struct TileEdges {
  static constexpr int H = kW - 1, T = kTail ? H : 1;
  uint32_t w_bits[kW], b_bits;
  X head_raw[H], xtail_raw[T], gtail_raw[T];

  float wr[kW];  // wr[k] multiplies the input k positions back
  float bias;
  float head[H], xtail[T], gtail[T];

  // t_end: the position after the tile; gr: dout's row (kTail only).
  __device__ void fetch(const ConvParams& p, int64_t b, int64_t d, int64_t t0, int64_t t_end,
                        const X* xr, const X* gr) {
#pragma unroll
    for (int k = 0; k < kW; ++k)
      w_bits[k] = param_bits(p.weight.data, d * p.weight.s0 + (kW - 1 - k) * p.weight.s1,
                             p.weight_dtype);
    b_bits = p.bias.data != nullptr ? param_bits(p.bias.data, d * p.bias.s0, p.weight_dtype) : 0u;
    const Strided& is = p.initial_states;
    const X* ir = is.data != nullptr ? ptr<const X>(is) + b * is.s0 + d * is.s1 : nullptr;
#pragma unroll
    for (int i = 0; i < H; ++i) {
      const int64_t pos = t0 - H + i;
      head_raw[i] = pos >= 0 ? xr[pos] : ir != nullptr ? ir[(H + pos) * is.s2] : from_f<X>(0.f);
    }
    if constexpr (kTail) {
#pragma unroll
      for (int i = 0; i < H; ++i) {
        const bool inside = t_end + i < p.seqlen;
        xtail_raw[i] = inside ? xr[t_end + i] : from_f<X>(0.f);
        gtail_raw[i] = inside ? gr[t_end + i] : from_f<X>(0.f);
      }
    }
  }

  __device__ void unpack(const ConvParams& p) {
#pragma unroll
    for (int k = 0; k < kW; ++k) wr[k] = param_value(w_bits[k], p.weight_dtype);
    bias = p.bias.data != nullptr ? param_value(b_bits, p.weight_dtype) : 0.f;
#pragma unroll
    for (int i = 0; i < H; ++i) head[i] = to_f(head_raw[i]);
#pragma unroll
    for (int i = 0; i < T; ++i) {
      xtail[i] = to_f(xtail_raw[i]);
      gtail[i] = to_f(gtail_raw[i]);
    }
  }
};

template <typename X>
__device__ Row<X> make_row(const ConvParams& p, int64_t b, int64_t d) {
  Row<X> r;
  r.x = ptr<const X>(p.x) + b * p.x.s0 + d * p.x.s1;
  r.xs = p.x.s2;
  if (p.initial_states.data) {
    r.init = ptr<const X>(p.initial_states) + b * p.initial_states.s0 + d * p.initial_states.s1;
    r.is = p.initial_states.s2;
  }
  if (p.seq_idx.data && p.seqlen > 0) {
    r.seq = ptr<const int32_t>(p.seq_idx) + b * p.seq_idx.s0;
    r.ss = p.seq_idx.s1;
  }
  if (p.dout.data) {
    r.dout = ptr<const X>(p.dout) + b * p.dout.s0 + d * p.dout.s1;
    r.dos = p.dout.s2;
  }
  r.L = p.seqlen;
  r.W = p.width;
  r.d = d;
  r.first_id = r.seq ? r.seq[0] : 0;
  r.last_id = r.seq ? r.seq[(p.seqlen - 1) * r.ss] : r.first_id;
  return r;
}

// Pre-activation output at token t (0 <= t < L). Taps across a segment
// boundary are skipped, not multiplied by 0: NaN/Inf in another segment
// must not leak in (Inf * 0 is NaN). Zero history without initial states
// does take part, as in F.conv1d's zero padding.
template <typename X>
__device__ float y_at(const ConvParams& p, const Row<X>& r, int64_t t) {
  const int32_t tok = r.id(t);
  float acc = bias_at(p, r.d);
  for (int64_t k = 0; k < r.W; ++k) {
    const int64_t pos = t - (r.W - 1) + k;
    if (r.seq && r.id_in(pos) != tok) continue;
    acc += weight_at(p, r.d, k) * r.in(pos, tok);
  }
  return acc;
}

// Gradient at the pre-activation output of token t: 0 outside [0, L) and
// for padding tokens (their output is the constant 0).
template <typename X>
__device__ float dy_at(const ConvParams& p, const Row<X>& r, int64_t t) {
  if (t < 0 || t >= r.L) return 0.f;
  if (r.seq && r.id(t) < 0) return 0.f;
  const float g = to_f(r.dout[t * r.dos]);
  return p.silu ? g * silu_grad(y_at(p, r, t)) : g;
}

// E consecutive channels d .. d+E-1 (ne of them real, the rest 0) at
// position pos of batch row b of a channel-last view v (x or dout), element by
// element: the initial state's column for pos < 0 (zeros without one), and v
// otherwise. The channel-last kernels use it where a vector load cannot be.
template <typename X, int E>
__device__ Pack<X, E> channels_at(const ConvParams& p, const Strided& v, int64_t b, int64_t pos,
                                  int64_t d, int ne) {
  Pack<X, E> out;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    X val = from_f<X>(0.f);
    if (e < ne) {
      if (pos >= 0) {
        val = ptr<const X>(v)[b * v.s0 + (d + e) * v.s1 + pos * v.s2];
      } else if (p.initial_states.data != nullptr) {
        val = ptr<const X>(p.initial_states)[b * p.initial_states.s0 + (d + e) * p.initial_states.s1 +
                                             (p.width - 1 + pos) * p.initial_states.s2];
      }
    }
    out.v[e] = val;
  }
  return out;
}

// wr[k][e] = weight[d0 + e, W-1-k], the tap k positions back (0 for k >= W),
// and bias[e], for the E channels from d0 of a channel-last lane; channels
// past the ne real ones mirror d0, so that their values stay finite.
template <int kW, int E>
__device__ inline void channel_taps(const ConvParams& p, int64_t d0, int ne, int W,
                                    float (&wr)[kW][E], float (&bias)[E]) {
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int64_t d = e < ne ? d0 + e : d0;
    bias[e] = bias_at(p, d);
#pragma unroll
    for (int k = 0; k < kW; ++k) wr[k][e] = k < W ? weight_at(p, d, W - 1 - k) : 0.f;
  }
}

// Stores the E consecutive channels of o at dst (channel stride cs): one
// 16-byte store when `vec` (all E real and aligned), else the first ne one
// by one. The channel-last kernels' output step.
template <typename X, int E>
__device__ __forceinline__ void store_channels(X* dst, const Pack<X, E>& o, bool vec, int ne,
                                               int64_t cs) {
  if (vec) {
    store_pack(dst, o);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (e < ne) dst[e * cs] = o.v[e];
  }
}

}  // namespace causal_conv1d::cuda
