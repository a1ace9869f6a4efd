// The backward's rows layouts (x.s2 == 1): the rows and rows_tiled kernels
// and their launchers. bwd.cu describes the backward and picks the layout.
#include "bwd.cuh"

namespace causal_conv1d::cuda {
namespace {

// ---------------------------------------------------------------------------
// rows: x.s2 == 1 (or L == 1). One warp per (row, chunk of 32 * E positions).

template <typename X, int kW, bool kExact, bool kSeq>
__global__ void __launch_bounds__(kThreads)
    bwd_rows_kernel(ConvParams p, int64_t wchunks, bool x_vec, bool dout_vec, bool dx_vec,
                    float* ws) {
  constexpr int E = kVec16<X>;
  constexpr int NH = (kW - 1 + E - 1) / E;  // halo vectors on each side
  constexpr int O = NH * E;                 // window index of t0
  constexpr int M = E + NH * E;             // positions t0 .. t0 + M - 1 get a dy
  constexpr int N = O + M;                  // x window: t0 - O .. t0 + M - 1
  using V = Pack<X, E>;
  const int64_t D = p.dim, L = p.seqlen;
  const int W = kExact ? kW : static_cast<int>(p.width);
  const int lane = threadIdx.x % kWarp;
  const int64_t total = p.batch * D * wchunks;
  const int64_t warp_stride = grid_threads() / kWarp;
  for (int64_t wg = global_thread() / kWarp; wg < total; wg += warp_stride) {
    const int64_t row = wg / wchunks, wc = wg - row * wchunks;
    const int64_t b = row / D, d = row - b * D;
    const int64_t t0 = (wc * kWarp + lane) * E;
    float dwr[kW];
#pragma unroll
    for (int k = 0; k < kW; ++k) dwr[k] = 0.f;
    float db = 0.f;

    if (t0 < L) {
      const X* xr = ptr<const X>(p.x) + b * p.x.s0 + d * p.x.s1;
      const X* gr = ptr<const X>(p.dout) + b * p.dout.s0 + d * p.dout.s1;
      float wr[kW];  // wr[k] multiplies the input k positions back
#pragma unroll
      for (int k = 0; k < kW; ++k) wr[k] = (kExact || k < W) ? weight_at(p, d, W - 1 - k) : 0.f;
      const float bias = bias_at(p, d);

      float win[N];
      load_row_window<N / E, E>(win, p, xr, b, d, t0, O, W, x_vec, [&](int64_t base) {
        return base + E > t0 - (W - 1) && base < t0 + E + (W - 1);
      });
      int32_t ids[kSeq ? N : 1];
      int32_t last_id = 0;
      if constexpr (kSeq) {
        const int32_t* sr = ptr<const int32_t>(p.seq_idx) + b * p.seq_idx.s0;
        const int32_t first = sr[0];
        last_id = sr[(L - 1) * p.seq_idx.s1];
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const int64_t pos = t0 - O + i;
          const bool needed = pos >= t0 - (W - 1) && pos < t0 + E + (W - 1);
          ids[i] = (!needed || pos >= L) ? -1 : pos < 0 ? first : sr[pos * p.seq_idx.s1];
        }
      }

      // dy at positions t0 + m for m < E + W - 1 (the last W - 1 for dx only).
      float g[M];
#pragma unroll
      for (int q = 0; q < M / E; ++q) {
        const int64_t base = t0 + q * E;
        const bool needed = base < t0 + E + (W - 1);
        if (needed && dout_vec && base + E <= L) {
          const V v = load_pack<X, E>(gr + base);
#pragma unroll
          for (int e = 0; e < E; ++e) g[q * E + e] = to_f(v.v[e]);
        } else {
#pragma unroll
          for (int e = 0; e < E; ++e) {
            const int64_t pos = base + e;
            g[q * E + e] =
                (needed && pos < L && e + q * E < E + W - 1) ? to_f(gr[pos * p.dout.s2]) : 0.f;
          }
        }
      }
      float dy[M];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        dy[m] = 0.f;
        if (m < E + W - 1 && t0 + m < L) {
          const int32_t tok = kSeq ? ids[O + m] : 0;
          if (!kSeq || tok >= 0) {
            float gm = g[m];
            if (p.silu) {
              float y = bias;
#pragma unroll
              for (int k = 0; k < kW; ++k)
                if ((kExact || k < W) && (!kSeq || ids[O + m - k] == tok))
                  y += wr[k] * win[O + m - k];
              gm *= silu_grad(y);
            }
            dy[m] = gm;
          }
        }
      }

      // dx, and the dweight/dbias partials of the thread's E positions.
      const X* fr = p.dfinal_states.data != nullptr
                        ? ptr<const X>(p.dfinal_states) + b * p.dfinal_states.s0 +
                              d * p.dfinal_states.s1
                        : nullptr;
      float dxv[E];
#pragma unroll
      for (int j = 0; j < E; ++j) {
        const int32_t tok = kSeq ? ids[O + j] : 0;
        float acc = 0.f;
#pragma unroll
        for (int m = 0; m < kW; ++m)
          if ((kExact || m < W) && (!kSeq || ids[O + j + m] == tok)) acc += wr[m] * dy[j + m];
        const int64_t pos = t0 + j;
        if (fr != nullptr && pos >= L - (W - 1) && pos < L && (!kSeq || tok == last_id))
          acc += to_f(fr[(pos - (L - (W - 1))) * p.dfinal_states.s2]);
        dxv[j] = acc;
        // padding tokens have dy == 0 and take no part (their x may be NaN)
        if (pos < L && (!kSeq || tok >= 0)) {
#pragma unroll
          for (int k = 0; k < kW; ++k)
            if ((kExact || k < W) && (!kSeq || ids[O + j - k] == tok))
              dwr[k] += dy[j] * win[O + j - k];
          db += dy[j];
        }
      }

      store_chunk(ptr<X>(p.dx) + b * p.dx.s0 + d * p.dx.s1, t0, L, p.dx.s2, dx_vec, dxv);
    }

    // Whole warp (the loop bound is uniform per warp): reduce and emit.
#pragma unroll
    for (int k = 0; k < kW; ++k)
      if (kExact || k < W) dwr[k] = warp_sum(dwr[k]);
    db = warp_sum(db);
    if (lane == 0) {
      float* slot = ws != nullptr ? ws + (b * wchunks + wc) * D * (W + 1) : nullptr;
      emit_partials<kW, kExact>(p, W, d, dwr, db, slot);
    }
  }
}

// ---------------------------------------------------------------------------
// rows_tiled: the rows layout with x, dout and dx 16-byte aligned, W in
// {2, 3, 4}, no seq_idx, rows of at least one tile. A warp owns a WarpTile of
// x and of dout (32 * C vectors of a row): each lane computes dy for its own
// positions only (the x before a vector comes from the neighbouring lane),
// then takes the H = W-1 dy after each vector from the neighbouring lane too;
// only the H positions after the tile are recomputed (by lane 31). Partials
// are reduced once per tile.

// dy at one position from y's inputs in[0..kW-1] (in[k] is the input k
// positions back) and the output gradient g; 0 where !inside (positions >= L,
// so that NaN/Inf in x cannot leak through them). Selects, not branches: the
// positions of a tile then interleave (each one's silu is a chain of two
// MUFU operations that one position alone would wait for; a runtime silu
// flag would split the tile into one block per position).
template <bool kSilu, int kW>
__device__ __forceinline__ float dy_from(const float (&wr)[kW], float bias, const float (&in)[kW],
                                         float g, bool inside) {
  float dy = g;
  if constexpr (kSilu) {
    float y = bias;
#pragma unroll
    for (int k = 0; k < kW; ++k) y += wr[k] * in[k];
    dy = g * silu_grad(y);
  }
  return inside ? dy : 0.f;
}

template <typename X, int kW, int C, bool kSilu>
__global__ void __launch_bounds__(kThreads)
    bwd_rows_tiled_kernel(ConvParams p, int64_t tiles, float* ws) {
  using Tile = WarpTile<X, C>;
  constexpr int E = Tile::E, H = kW - 1;
  static_assert(H >= 1 && H <= E, "the neighbours of a vector come from one lane");
  const int64_t D = p.dim, L = p.seqlen;
  const int64_t total = p.batch * D * tiles;
  const int lane = threadIdx.x % kWarp;
  Tile xt, gt;  // x and dout
  TileEdges<X, kW, true> edges;
  xt.lane = gt.lane = lane;
  for_each_tile(total, tiles, D, Tile::kLen, [&](const TileAt& at) {
    {  // every load of the tile in flight before the first wait
      const X* xr = ptr<const X>(p.x) + at.b * p.x.s0 + at.d * p.x.s1;
      const X* gr = ptr<const X>(p.dout) + at.b * p.dout.s0 + at.d * p.dout.s1;
      xt.fetch(xr, at.t0, L);
      gt.fetch(gr, at.t0, L);
      edges.fetch(p, at.b, at.d, at.t0, at.t0 + Tile::kLen, xr, gr);
      xt.unpack(at.t0);
      gt.unpack(at.t0);
      edges.unpack(p);
    }
    const int64_t b = at.b, d = at.d, tile = at.t0 / Tile::kLen;
    const float(&wr)[kW] = edges.wr;
    const float bias = edges.bias;

    // dy at the tile's positions, and the dweight/dbias partials.
    float dy[C][E], dwr[kW] = {}, db = 0.f;
#pragma unroll
    for (int q = 0; q < C; ++q) {
      float prev[H];
      lanes_before(xt.v, q, lane, edges.head, prev);
      const int inside = positions_before(L, xt.at(q), E);
#pragma unroll
      for (int j = 0; j < E; ++j) {
        float in[kW];
#pragma unroll
        for (int k = 0; k < kW; ++k) in[k] = j - k >= 0 ? xt.v[q][j - k] : prev[H + j - k];
        dy[q][j] = dy_from<kSilu>(wr, bias, in, gt.v[q][j], j < inside);
#pragma unroll
        for (int k = 0; k < kW; ++k) dwr[k] += dy[q][j] * in[k];
        db += dy[q][j];
      }
    }

    // dy at the H positions after the tile (lane 31 needs them for dx).
    float tail[H] = {};
    if (lane == kWarp - 1) {
      const int64_t te = xt.t0 + Tile::kLen;
      float win[2 * H];  // inputs at te - H .. te + H - 1
#pragma unroll
      for (int i = 0; i < H; ++i) {
        win[i] = xt.v[C - 1][E - H + i];
        win[H + i] = edges.xtail[i];
      }
#pragma unroll
      for (int i = 0; i < H; ++i) {
        float in[kW];
#pragma unroll
        for (int k = 0; k < kW; ++k) in[k] = win[H + i - k];
        tail[i] = dy_from<kSilu>(wr, bias, in, edges.gtail[i], te + i < L);
      }
    }

    // dx[t] = sum_m wr[m] * dy[t + m], plus dfinal_states for the last H
    // (a vector holding any of them is the rare case, handled apart).
    const Strided& f = p.dfinal_states;
    const X* fr = f.data != nullptr ? ptr<const X>(f) + b * f.s0 + d * f.s1 : nullptr;
    float dx[C][E];
#pragma unroll
    for (int q = 0; q < C; ++q) {
      float next[H];
      lanes_after(dy, q, lane, tail, next);
#pragma unroll
      for (int j = 0; j < E; ++j) {
        float acc = 0.f;
#pragma unroll
        for (int m = 0; m < kW; ++m) acc += wr[m] * (j + m < E ? dy[q][j + m] : next[j + m - E]);
        dx[q][j] = acc;
      }
      const int64_t final0 = L - H - xt.at(q);  // vector index of the first final position
      if (fr != nullptr && final0 < E && final0 > -H) {
#pragma unroll
        for (int j = 0; j < E; ++j)
          if (j >= final0 && j < final0 + H) dx[q][j] += to_f(fr[(j - final0) * f.s2]);
      }
    }
    xt.store(ptr<X>(p.dx) + b * p.dx.s0 + d * p.dx.s1, L, dx);

#pragma unroll
    for (int k = 0; k < kW; ++k) dwr[k] = warp_sum(dwr[k]);
    db = warp_sum(db);
    if (lane == 0) {
      float* slot = ws != nullptr ? ws + (b * tiles + tile) * D * (kW + 1) : nullptr;
      emit_partials<kW, true>(p, kW, d, dwr, db, slot);
    }
  });
}

}  // namespace

void launch_bwd_rows(const ConvParams& p, int64_t wchunks, bool x_vec, bool dout_vec, bool dx_vec,
                     float* partials, cudaStream_t stream) {
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    const int64_t B = p.batch, D = p.dim;
    const bool seq = p.seq_idx.data != nullptr;
    dispatch_width<kRowsMaxWidth>(p.width, [&](auto wt) {
      constexpr int kW = decltype(wt)::kW;
      constexpr bool kExact = decltype(wt)::kExact;
      auto kernel = seq ? bwd_rows_kernel<X, kW, kExact, true>
                        : bwd_rows_kernel<X, kW, kExact, false>;
      launch(kernel, grid_for(B * D * wchunks * kWarp), stream, p, wchunks, x_vec, dout_vec,
             dx_vec, partials);
    });
  });
}

void launch_bwd_rows_tiled(const ConvParams& p, int64_t tiles, int64_t vectors, float* partials,
                           cudaStream_t stream) {
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    const int64_t B = p.batch, D = p.dim;
    dispatch_exact_width(p.width, [&](auto wt) {
      constexpr int kW = decltype(wt)::kW;
      constexpr int C = tile_vectors(kBwdTilePositions, sizeof(X));
      auto kernel = dispatch_flags(vectors == C, p.silu, [](auto wide, auto ksilu) {
        return bwd_rows_tiled_kernel<X, kW, decltype(wide)::value ? C : 1, decltype(ksilu)::value>;
      });
      const int64_t work = B * D * tiles * kWarp;
      launch(kernel, grid_for(work), stream, p, tiles, partials);
    });
  });
}

}  // namespace causal_conv1d::cuda
