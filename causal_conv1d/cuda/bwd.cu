// Backward (backend.h run_bwd) on CUDA.
//
// With y the pre-activation output and dy = dout * act'(y) (0 for padding
// tokens and outside [0, L)):
//   dx[p]      = sum_m w[W-1-m] * dy[p+m]   over m in [0, W) within p's segment
//                + dfinal[p - (L-(W-1))]     for the last W-1 positions of the
//                                            last segment
//   dweight[k] = sum_{b,t} dy[t] * xin[t-(W-1)+k]   (fp32 accumulators)
//   dbias      = sum_{b,t} dy[t]
//   dinit[i]   = the same sums for the positions before 0, plus dfinal.
// silu is recomputed from x. Kernels mirror the forward's layouts:
//   rows      x.s2 == 1, widths <= 16: a thread owns 16 bytes of consecutive
//             positions; a warp's dweight/dbias partials are reduced with
//             shuffles (fixed order) and either added atomically or, in
//             deterministic mode, stored per (row, warp chunk) and summed in
//             a fixed order by reduce_partials_kernel.
//   rows_tiled  the rows layout for W <= 4 without seq_idx on aligned rows of
//             >= 512 bytes: a warp owns 32 * C vectors of a row, neighbours'
//             x and dy by shuffle, partials once per tile.
//   chanlast  x.s1 == 1, widths <= 8: a block stages x and dout tiles in
//             shared memory, a lane owns 4 channels of a warp's time steps;
//             partials per (batch, group of consecutive tiles), the block's
//             warps summed in order.
//   generic   any strides or width: dy goes to a float buffer first, then dx
//             and a per-channel block reduction for dweight (deterministic).
// dinitial_states always come from a small kernel of their own.
#include "launch.h"
#include "rows.cuh"

namespace causal_conv1d::cuda {
namespace {

constexpr int kRowsMaxWidth = 16;
constexpr int kChanlastMaxWidth = 8;

// Adds a thread's reversed-tap partials (dwr[k] belongs to tap W-1-k) and its
// dbias partial for channel d to the accumulators: atomically, or into this
// thread's slot of the workspace (deterministic mode).
template <int kW, bool kExact>
__device__ __forceinline__ void emit_partials(const ConvParams& p, int W, int64_t d,
                                              const float* dwr, float db, float* ws_slot) {
  float* dw = static_cast<float*>(p.dweight_acc);
  float* dbias = static_cast<float*>(p.dbias_acc);
  if (ws_slot != nullptr) {
#pragma unroll
    for (int k = 0; k < kW; ++k)
      if (kExact || k < W) ws_slot[d * (W + 1) + (W - 1 - k)] = dwr[k];
    ws_slot[d * (W + 1) + W] = db;
  } else {
#pragma unroll
    for (int k = 0; k < kW; ++k)
      if (kExact || k < W) atomicAdd(dw + d * W + (W - 1 - k), dwr[k]);
    if (dbias != nullptr) atomicAdd(dbias + d, db);
  }
}

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

      X* dxr = ptr<X>(p.dx) + b * p.dx.s0 + d * p.dx.s1;
      if (dx_vec && t0 + E <= L) {
        V v;
#pragma unroll
        for (int e = 0; e < E; ++e) v.v[e] = from_f<X>(dxv[e]);
        store_pack(dxr + t0, v);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e)
          if (t0 + e < L) dxr[(t0 + e) * p.dx.s2] = from_f<X>(dxv[e]);
      }
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

// ---------------------------------------------------------------------------
// chanlast: x.s1 == 1 (or D == 1), widths <= 8. A block owns 128 channels
// (4 per lane) of a group of `group` consecutive time tiles of 4 warps x
// kSteps positions, and walks them in order. For each tile it stages x (with
// W-1 rows of history and W-1 rows of lookahead) and dout (with W-1 rows of
// lookahead) in shared memory, all loads in flight at once; each warp then
// walks its positions and their W-1 successors once in an unrolled loop,
// keeping the last W rows of x (converted once, on arrival) and the last W
// output gradients in registers as windows that slide by register renaming.
// The dweight/dbias partials stay in registers across the group's tiles, and
// the 4 warps' sums are added in a fixed order through shared memory once per
// group (one workspace slot per (batch, group) in deterministic mode).

template <typename X>
__host__ __device__ constexpr int bwd_steps_per_warp() { return sizeof(X) == 4 ? 8 : 16; }

// The rows of the channel-last backward tile that starts at t0 (TT positions,
// the last tile cut at L).
struct ChanlastTile {
  int64_t t0, row0;  // first position; position of x row 0 (t0 - (W-1))
  int64_t t_end;     // end of the tile's own positions: min(t0 + TT, L)
  int xrows, grows;  // x and dout rows that hold data (positions < min(t_end + W-1, L))
};

__device__ __forceinline__ ChanlastTile chanlast_tile(int64_t t0, int TT, int W, int64_t L) {
  ChanlastTile t;
  t.t0 = t0;
  t.row0 = t.t0 - (W - 1);
  t.t_end = t.t0 + TT < L ? t.t0 + TT : L;
  const int64_t p_end = t.t_end + (W - 1) < L ? t.t_end + (W - 1) : L;
  t.xrows = static_cast<int>(p_end - t.row0);
  t.grows = static_cast<int>(p_end - t.t0);
  return t;
}

template <typename X, int kW, bool kExact, bool kSeq, bool kSilu>
__global__ void __launch_bounds__(kThreads)
    bwd_chanlast_kernel(ConvParams p, int64_t cblocks, int64_t groups, int group, bool x_vec,
                        bool dout_vec, bool dx_vec, float* ws) {
  constexpr int E = 4;
  constexpr int kWarps = kThreads / kWarp;
  constexpr int CB = kWarp * E;  // channels per block (== kThreads)
  constexpr int kSteps = bwd_steps_per_warp<X>();
  constexpr int TT = kWarps * kSteps;
  constexpr int RX = TT + 2 * (kW - 1);  // x rows: positions t0-(W-1) .. t0+TT+W-2
  constexpr int RG = TT + kW - 1;        // dout rows: positions t0 .. t0+TT+W-2
  using V = Pack<X, E>;
  constexpr size_t kTileBytes = sizeof(V) * kWarp * (RX + RG);
  constexpr size_t kRedBytes = sizeof(float) * kWarps * (kW + 1) * CB;
  constexpr size_t kBytes = kTileBytes > kRedBytes ? kTileBytes : kRedBytes;
  __shared__ Pack<float, 4> smem_raw[(kBytes + 15) / 16];  // 16-byte aligned storage
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_raw);
  __shared__ int32_t tile_ids[kSeq ? RX : 1];
  auto xt = reinterpret_cast<V(*)[kWarp]>(smem);
  auto gt = reinterpret_cast<V(*)[kWarp]>(smem + sizeof(V) * kWarp * RX);
  float* red = reinterpret_cast<float*>(smem);  // [warp][k][channel], after the group's tiles

  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t D = p.dim, L = p.seqlen;
  const int W = kExact ? kW : static_cast<int>(p.width);
  const int64_t total = p.batch * groups * cblocks;
  // A pass of the loop walks one tile: tile `done` of block iteration blk's
  // group. Only the partials and (blk, done) carry over to the next pass;
  // the rest is derived again, which takes fewer registers than keeping it
  // for the whole group (sm_90: 116 instead of 138 for bf16, W=4, silu).
  float dwr[kW][E], db[E];  // dwr[k]: the group's partial of the tap k positions back
  int done = 0;             // tiles of the group walked so far
  for (int64_t blk = blockIdx.x; blk < total;) {
    // r = b * groups + g: the workspace slot of group g of batch b
    const int64_t cb = blk % cblocks, r = blk / cblocks;
    const int64_t b = r / groups, g = r % groups;
    // the group's tiles start at t_first; the last group may hold fewer
    const int64_t t_first = g * group * TT;
    const int64_t left = (L - t_first + TT - 1) / TT;
    const int count = left < group ? static_cast<int>(left) : group;
    const ChanlastTile tile = chanlast_tile(t_first + done * TT, TT, W, L);
    const int64_t c0 = cb * CB;
    // Lane l's channels: E from d0 = c0 + l*E, ne of them real.
    const int64_t d0 = c0 + lane * E;
    const int ne = D - d0 >= E ? E : D - d0 > 0 ? static_cast<int>(D - d0) : 0;
    const int32_t* sr = kSeq ? ptr<const int32_t>(p.seq_idx) + b * p.seq_idx.s0 : nullptr;

    // Puts a tile's loads in flight: warp w loads tile rows w, w + 4, ...,
    // lane l its channels.
    auto stage = [&](const ChanlastTile& t) {
      const X* xb = ptr<const X>(p.x) + b * p.x.s0 + d0;  // channel stride 1 when vectors are used
      const X* gb = ptr<const X>(p.dout) + b * p.dout.s0 + d0;
      for (int row = warp; row < t.xrows; row += kWarps) {
        const int64_t pos = t.row0 + row;
        if (pos >= 0 && x_vec && ne == E) {
          copy_async(&xt[row][lane], reinterpret_cast<const V*>(xb + pos * p.x.s2));
        } else {
          xt[row][lane] = channels_at<X, E>(p, p.x, b, pos, d0, ne);
        }
      }
      for (int row = warp; row < t.grows; row += kWarps) {
        const int64_t pos = t.t0 + row;
        if (dout_vec && ne == E) {
          copy_async(&gt[row][lane], reinterpret_cast<const V*>(gb + pos * p.dout.s2));
        } else {
          gt[row][lane] = channels_at<X, E>(p, p.dout, b, pos, d0, ne);
        }
      }
    };
    // Waits for the staged tile and publishes it (with its rows' segments).
    auto arrive = [&](const ChanlastTile& t) {
      copy_async_wait();
      if constexpr (kSeq) {
        for (int row = threadIdx.x; row < t.xrows; row += kThreads) {
          const int64_t pos = t.row0 + row;
          tile_ids[row] = pos < 0 ? sr[0] : sr[pos * p.seq_idx.s1];
        }
      }
      __syncthreads();
    };

    stage(tile);
    // The taps while the tile is in flight (arrive waits for both):
    // w[k] natural taps (for dx), wr[k] = w[W-1-k] (for y and dweight).
    float w[kW][E] = {}, wr[kW][E] = {}, bias[E] = {};
    if (ne > 0) {
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int64_t d = e < ne ? d0 + e : d0;
        bias[e] = bias_at(p, d);
#pragma unroll
        for (int k = 0; k < kW; ++k) {
          w[k][e] = (kExact || k < W) ? weight_at(p, d, k) : 0.f;
          if constexpr (!kExact) wr[k][e] = k < W ? weight_at(p, d, W - 1 - k) : 0.f;
        }
      }
      if constexpr (kExact) {
#pragma unroll
        for (int k = 0; k < kW; ++k)
#pragma unroll
          for (int e = 0; e < E; ++e) wr[k][e] = w[kW - 1 - k][e];
      }
    }
    const int32_t last = kSeq ? sr[(L - 1) * p.seq_idx.s1] : 0;
    const X* fr = p.dfinal_states.data != nullptr
                      ? ptr<const X>(p.dfinal_states) + b * p.dfinal_states.s0
                      : nullptr;


    // dx at a staged tile's positions, and its dweight/dbias terms added to
    // dwr and db: warp w walks positions q0 .. q1-1.
    auto walk_tile = [&](const ChanlastTile& t) {
      const int64_t q0 = t.t0 + warp * kSteps;
      const int64_t q1 = q0 + kSteps < t.t_end ? q0 + kSteps : t.t_end;
      if (ne == 0 || q0 >= q1) return;
      float gw[kW][E];  // output gradients of the last W positions, newest last
      float xw[kW][E];  // xw[k]: x k positions before the current one (taps k >= W unused)
      int32_t ids[kW];  // and its segment (with seq_idx)
#pragma unroll
      for (int k = 0; k < kW; ++k) {
        ids[k] = 0;
#pragma unroll
        for (int e = 0; e < E; ++e) gw[k][e] = xw[k][e] = 0.f;
      }
      auto load_x = [&](int k, int i) {  // x tile row i into window slot k
        const V v = xt[i][lane];
#pragma unroll
        for (int e = 0; e < E; ++e) xw[k][e] = to_f(v.v[e]);
        if (kSeq) ids[k] = tile_ids[i];
      };
      const int i0 = static_cast<int>(q0 - t.row0);  // x tile row of q0
#pragma unroll
      for (int k = 1; k < kW; ++k)
        if (kExact || k < W) load_x(k, i0 - k);

      // Walk positions q0 + j: the warp's own (j < steps) and the W-1 after
      // them, whose gradients its last dx need; only those before L (j < nd)
      // have one. The loop is unrolled (a uniform exit for short tiles and
      // runtime widths), so the x, segment and gradient windows slide by
      // renaming.
      const int steps = static_cast<int>(q1 - q0);
      const int n = steps + W - 1;
      const int nd = L - q0 < n ? static_cast<int>(L - q0) : n;
      X* dxp = ptr<X>(p.dx) + b * p.dx.s0 + q0 * p.dx.s2 + d0 * p.dx.s1;  // dx at q0 + j - (W-1)
      // Full tiles (every step and its W-1 successors before L, no dx among
      // the last W-1 positions, vector stores) take a copy of the step loop
      // with constant bounds, one straight block (sm_90, bf16, W=4: 97
      // instructions a step against 194; measured on an H100: bf16 67% of
      // copy against 53%); other tiles test the bounds per step.
      auto walk = [&](auto full) {
        constexpr bool kFull = decltype(full)::value;
        const int n_ = kFull ? kSteps + kW - 1 : n;
        const int nd_ = kFull ? kSteps + kW - 1 : nd;
        const int steps_ = kFull ? kSteps : steps;
#pragma unroll
        for (int j = 0; j < kSteps + kW - 1; ++j) {
          if (j == n_) break;
          const int i = i0 + j;  // x tile row of the position
          float dy[E] = {};
          if (j < nd_) {
            load_x(0, i);
            const int32_t tok = ids[0];
            if (!kSeq || tok >= 0) {
              bool same[kW];  // taps that see the position's segment
#pragma unroll
              for (int k = 0; k < kW; ++k)
                same[k] = (kExact || k < W) && (!kSeq || ids[k] == tok);
              const V g = gt[warp * kSteps + j][lane];
#pragma unroll
              for (int e = 0; e < E; ++e) {
                dy[e] = to_f(g.v[e]);
                if constexpr (kSilu) {  // not a runtime flag, which splits the channels into blocks
                  float y = bias[e];
#pragma unroll
                  for (int k = 0; k < kW; ++k)
                    if (same[k]) y += wr[k][e] * xw[k][e];
                  dy[e] *= silu_grad(y);
                }
              }
              if (j < steps_) {
#pragma unroll
                for (int e = 0; e < E; ++e) {
                  db[e] += dy[e];
#pragma unroll
                  for (int k = 0; k < kW; ++k)
                    if (same[k]) dwr[k][e] += dy[e] * xw[k][e];
                }
              }
            }
          }
#pragma unroll
          for (int k = 0; k + 1 < kW; ++k)
#pragma unroll
            for (int e = 0; e < E; ++e) gw[k][e] = gw[k + 1][e];
#pragma unroll
          for (int e = 0; e < E; ++e) gw[kW - 1][e] = dy[e];

          // dx at q = q0 + j - (W-1) (< q1 <= L): w[k] meets the gradient of
          // position q + W-1 - k, which exists when it is before L.
          if (j >= W - 1) {
            const int64_t q = q0 + j - (W - 1);
            const int32_t qid = !kSeq ? 0 : kExact ? ids[kW - 1] : tile_ids[i - (W - 1)];
            float acc[E] = {};
#pragma unroll
            for (int k = 0; k < kW; ++k)
              if ((kExact || k < W) && j - k < nd_ && (!kSeq || ids[k] == qid))
#pragma unroll
                for (int e = 0; e < E; ++e) acc[e] += w[k][e] * gw[kW - 1 - k][e];
            if (!kFull && fr != nullptr && q >= L - (W - 1) && (!kSeq || qid == last)) {
#pragma unroll
              for (int e = 0; e < E; ++e)
                if (e < ne)
                  acc[e] += to_f(fr[(d0 + e) * p.dfinal_states.s1 +
                                    (q - (L - (W - 1))) * p.dfinal_states.s2]);
            }
            V o;
#pragma unroll
            for (int e = 0; e < E; ++e) o.v[e] = from_f<X>(acc[e]);
            store_channels(dxp, o, kFull || (dx_vec && ne == E), ne, p.dx.s1);
            dxp += p.dx.s2;
          }
#pragma unroll
          for (int k = kW - 1; k > 0; --k) {
            ids[k] = ids[k - 1];
#pragma unroll
            for (int e = 0; e < E; ++e) xw[k][e] = xw[k - 1][e];
          }
        }
      };
      if constexpr (kExact && !kSeq) {
        if (steps == kSteps && L - q0 >= kSteps + kW - 1 && dx_vec && ne == E) {
          walk(std::true_type{});
        } else {
          walk(std::false_type{});
        }
      } else {
        walk(std::false_type{});
      }
    };

    // The 4 warps' partials of the group, summed in a fixed order (one
    // channel per thread) and emitted.
    auto reduce_and_emit = [&] {
#pragma unroll
      for (int k = 0; k <= kW; ++k)
#pragma unroll
        for (int e = 0; e < E; ++e)
          red[(warp * (kW + 1) + k) * CB + lane * E + e] = k < kW ? dwr[k][e] : db[e];
      __syncthreads();
      const int c = threadIdx.x;
      const int64_t d = c0 + c;
      if (d < D) {
        float part[kW], dsum = 0.f;
#pragma unroll
        for (int k = 0; k < kW; ++k) part[k] = 0.f;
#pragma unroll
        for (int wi = 0; wi < kWarps; ++wi) {
#pragma unroll
          for (int k = 0; k < kW; ++k) part[k] += red[(wi * (kW + 1) + k) * CB + c];
          dsum += red[(wi * (kW + 1) + kW) * CB + c];
        }
        float* slot = ws != nullptr ? ws + r * D * (W + 1) : nullptr;
        emit_partials<kW, kExact>(p, W, d, part, dsum, slot);
      }
    };

    arrive(tile);
    if (done == 0) {
#pragma unroll
      for (int e = 0; e < E; ++e) {
        db[e] = 0.f;
#pragma unroll
        for (int k = 0; k < kW; ++k) dwr[k][e] = 0.f;
      }
    }
    walk_tile(tile);
    // The tile is dead: the next tile's loads (or `red`) reuse shared memory.
    __syncthreads();
    if (++done == count) {  // the group's last tile
      reduce_and_emit();
      __syncthreads();  // before the next group's loads overwrite `red`
      done = 0;
      blk += gridDim.x;
    }
  }
}

// ---------------------------------------------------------------------------
// deterministic sum of the per-slot partials: ws is [slots][D][W+1]. A block
// owns 32 consecutive columns; its 4 warps take every 4th slot, and warp 0
// adds the 4 sums in order.

__global__ void __launch_bounds__(kThreads)
    reduce_partials_kernel(ConvParams p, const float* ws, int64_t slots) {
  constexpr int kPhases = kThreads / kWarp;
  __shared__ float sums[kPhases][kWarp];
  const int64_t W = p.width, cols = p.dim * (W + 1);
  const int lane = threadIdx.x % kWarp, phase = threadIdx.x / kWarp;
  const int64_t col_blocks = (cols + kWarp - 1) / kWarp;
  for (int64_t cb = blockIdx.x; cb < col_blocks; cb += gridDim.x) {
    const int64_t col = cb * kWarp + lane;
    float s = 0.f;
    if (col < cols)
      for (int64_t slot = phase; slot < slots; slot += kPhases) s += ws[slot * cols + col];
    sums[phase][lane] = s;
    __syncthreads();
    if (phase == 0 && col < cols) {
      float total = 0.f;
#pragma unroll
      for (int i = 0; i < kPhases; ++i) total += sums[i][lane];
      const int64_t d = col / (W + 1), k = col % (W + 1);
      if (k < W) {
        static_cast<float*>(p.dweight_acc)[d * W + k] += total;
      } else if (p.dbias_acc != nullptr) {
        static_cast<float*>(p.dbias_acc)[d] += total;
      }
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// generic: any strides and widths.

// dy[(b * D + d) * L + t], float.
template <typename X>
__global__ void __launch_bounds__(kThreads) bwd_dy_kernel(ConvParams p, float* dy) {
  const int64_t D = p.dim, L = p.seqlen, total = p.batch * D * L;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t t = i % L, r = i / L;
    const int64_t d = r % D, b = r / D;
    dy[i] = dy_at(p, make_row<X>(p, b, d), t);
  }
}

template <typename X>
__global__ void __launch_bounds__(kThreads)
    bwd_dx_generic_kernel(ConvParams p, const float* dy, bool t_fastest) {
  const int64_t D = p.dim, L = p.seqlen, W = p.width, total = p.batch * D * L;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    int64_t b, d, t;
    if (t_fastest) {
      t = i % L;
      const int64_t r = i / L;
      d = r % D;
      b = r / D;
    } else {
      d = i % D;
      const int64_t r = i / D;
      t = r % L;
      b = r / L;
    }
    const Row<X> row = make_row<X>(p, b, d);
    const float* dyr = dy + (b * D + d) * L;
    const int32_t tok = row.id(t);
    float acc = 0.f;
    for (int64_t m = 0; m < W && t + m < L; ++m)
      if (!row.seq || row.id(t + m) == tok) acc += weight_at(p, d, W - 1 - m) * dyr[t + m];
    if (p.dfinal_states.data != nullptr && t >= L - (W - 1) && tok == row.last_id)
      acc += to_f(ptr<const X>(p.dfinal_states)[b * p.dfinal_states.s0 + d * p.dfinal_states.s1 +
                                                 (t - (L - (W - 1))) * p.dfinal_states.s2]);
    ptr<X>(p.dx)[b * p.dx.s0 + d * p.dx.s1 + t * p.dx.s2] = from_f<X>(acc);
  }
}

// One block per channel: every thread sums a fixed subset of (b, t), then a
// fixed tree combines the threads. No atomics, same result every run.
template <typename X>
__global__ void __launch_bounds__(kThreads) bwd_dweight_generic_kernel(ConvParams p, const float* dy) {
  constexpr int kMax = 33;  // widths up to 32, plus the bias
  __shared__ float red[kThreads];
  const int64_t D = p.dim, L = p.seqlen, W = p.width, BL = p.batch * L;
  for (int64_t d = blockIdx.x; d < D; d += gridDim.x) {
    float acc[kMax];
    for (int k = 0; k <= W; ++k) acc[k] = 0.f;
    for (int64_t i = threadIdx.x; i < BL; i += blockDim.x) {
      const int64_t b = i / L, t = i % L;
      const Row<X> row = make_row<X>(p, b, d);
      const float g = dy[(b * D + d) * L + t];
      const int32_t tok = row.id(t);
      if (row.seq && tok < 0) continue;  // padding: dy == 0, and x there may be NaN
      for (int64_t k = 0; k < W; ++k) {
        const int64_t pos = t - (W - 1) + k;
        if (!row.seq || row.id_in(pos) == tok) acc[k] += g * row.in(pos, tok);
      }
      acc[W] += g;
    }
    for (int64_t k = 0; k <= W; ++k) {
      red[threadIdx.x] = acc[k];
      __syncthreads();
      for (int s = kThreads / 2; s > 0; s >>= 1) {
        if (static_cast<int>(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
      }
      if (threadIdx.x == 0) {
        if (k < W) {
          static_cast<float*>(p.dweight_acc)[d * W + k] += red[0];
        } else if (p.dbias_acc != nullptr) {
          static_cast<float*>(p.dbias_acc)[d] += red[0];
        }
      }
      __syncthreads();
    }
  }
}

// dinitial_states[b, d, i], i < W-1 (position i - (W-1)): the taps that read
// the initial state, from tokens of the first segment, plus dfinal_states
// for the columns that final_states copies (when L < W-1).
template <typename X>
__global__ void __launch_bounds__(kThreads) bwd_dinit_kernel(ConvParams p) {
  const int64_t D = p.dim, L = p.seqlen, H = p.width - 1, total = p.batch * D * H;
  for (int64_t idx = global_thread(); idx < total; idx += grid_threads()) {
    const int64_t i = idx % H, r = idx / H;
    const int64_t d = r % D, b = r / D;
    const Row<X> row = make_row<X>(p, b, d);
    float acc = 0.f;
    for (int64_t t = 0; t <= i && t < L; ++t)
      if (!row.seq || row.id(t) == row.first_id) acc += weight_at(p, d, i - t) * dy_at(p, row, t);
    if (p.dfinal_states.data != nullptr && i >= L && row.last_id == row.first_id)
      acc += to_f(ptr<const X>(p.dfinal_states)[b * p.dfinal_states.s0 + d * p.dfinal_states.s1 +
                                                 (i - L) * p.dfinal_states.s2]);
    ptr<X>(p.dinitial_states)[b * p.dinitial_states.s0 + d * p.dinitial_states.s1 +
                              i * p.dinitial_states.s2] = from_f<X>(acc);
  }
}

// ---------------------------------------------------------------------------
// plan: which kernels, and how much workspace

enum class Path { None, Rows, RowsTiled, Chanlast, Generic };

struct Plan {
  Path path = Path::None;
  // rows: a = warp chunks per row; rows_tiled: a = tiles per row, b = C;
  // chanlast: a = channel blocks, b = groups of `group` tiles (per batch)
  int64_t a = 0, b = 0, group = 1;
  int64_t slots = 0;  // partial-sum slots (deterministic mode)
  size_t ws_bytes = 0;
  bool x_vec = false, dout_vec = false, dx_vec = false;  // rows: 16-byte vectors allowed
};

// chanlast: tiles per group (a block iteration walks a group's tiles and
// emits its partials once). Larger groups divide the deterministic workspace
// (written and read again: 21 MB for bf16 B=4 D=4096 L=4096 with one tile a
// group) and the atomics by the group size, but leave fewer block iterations
// to spread over the SMs. Rule: the largest group up to kChanlastMaxGroup
// that keeps at least kChanlastMinBlocks block iterations, i.e.
// group = clamp(B * tiles * cblocks / kChanlastMinBlocks, 1, kChanlastMaxGroup)
// (then B * ceil(tiles / group) * cblocks >= kChanlastMinBlocks). A constant,
// not the device's SM count: the deterministic sums depend on the group, and
// must not change with the GPU.
constexpr int64_t kChanlastMaxGroup = 4;
constexpr int64_t kChanlastMinBlocks = 4 * 132;  // a wave of 4 blocks on each SM of an H100

int64_t chanlast_group(int64_t tile_blocks) {
  const int64_t g = tile_blocks / kChanlastMinBlocks;
  return g < 1 ? 1 : g > kChanlastMaxGroup ? kChanlastMaxGroup : g;
}

Plan make_plan(const ConvParams& p) {
  Plan plan;
  const int64_t B = p.batch, D = p.dim, L = p.seqlen, W = p.width;
  if (L == 0) return plan;
  const int64_t elem = p.x_dtype == DType::Float32 ? 4 : 2;
  const size_t part_bytes = sizeof(float) * static_cast<size_t>(D * (W + 1));
  if ((p.x.s2 == 1 || L == 1) && W <= kRowsMaxWidth) {
    const int64_t E = 16 / elem, tile1 = kWarp * E;
    const int64_t vectors = tile_vectors(kBwdTilePositions, static_cast<int>(elem));
    plan.x_vec = vector_aligned(p.x.data, elem, E, p.x.s0, B, p.x.s1, D);
    plan.dout_vec = (p.dout.s2 == 1 || L == 1) &&
                    vector_aligned(p.dout.data, elem, E, p.dout.s0, B, p.dout.s1, D);
    plan.dx_vec = (p.dx.s2 == 1 || L == 1) &&
                  vector_aligned(p.dx.data, elem, E, p.dx.s0, B, p.dx.s1, D);
    if (plan.x_vec && plan.dout_vec && plan.dx_vec && p.seq_idx.data == nullptr && W >= 2 &&
        W <= 4 && L >= tile1) {
      plan.path = Path::RowsTiled;
      plan.b = L >= vectors * tile1 ? vectors : 1;
      plan.a = (L + plan.b * tile1 - 1) / (plan.b * tile1);
    } else {
      plan.path = Path::Rows;
      plan.a = (L + kWarp * E - 1) / (kWarp * E);
    }
    plan.slots = B * plan.a;
  } else if ((p.x.s1 == 1 || D == 1) && W <= kChanlastMaxWidth) {
    const int64_t CB = kThreads, TT = (kThreads / kWarp) * (elem == 4 ? 8 : 16);
    plan.path = Path::Chanlast;
    plan.a = (D + CB - 1) / CB;
    const int64_t tiles = (L + TT - 1) / TT;
    plan.group = chanlast_group(B * tiles * plan.a);
    plan.b = (tiles + plan.group - 1) / plan.group;
    plan.slots = B * plan.b;
  } else {
    plan.path = Path::Generic;
    plan.ws_bytes = sizeof(float) * static_cast<size_t>(B * D * L);
    return plan;
  }
  if (p.deterministic) plan.ws_bytes = part_bytes * static_cast<size_t>(plan.slots);
  return plan;
}

}  // namespace

size_t bwd_workspace_bytes(const ConvParams& p) { return make_plan(p).ws_bytes; }

void launch_bwd(const ConvParams& p, void* workspace, cudaStream_t stream) {
  const Plan plan = make_plan(p);
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    const int64_t B = p.batch, D = p.dim, L = p.seqlen;
    const bool seq = p.seq_idx.data != nullptr;
    float* ws = static_cast<float*>(workspace);
    float* part = p.deterministic ? ws : nullptr;
    if (plan.path == Path::RowsTiled) {
      dispatch_exact_width(p.width, [&](auto wt) {
        constexpr int kW = decltype(wt)::kW;
        constexpr int C = tile_vectors(kBwdTilePositions, sizeof(X));
        auto kernel = dispatch_flags(plan.b == C, p.silu, [](auto wide, auto ksilu) {
          return bwd_rows_tiled_kernel<X, kW, decltype(wide)::value ? C : 1, decltype(ksilu)::value>;
        });
        const int64_t work = B * D * plan.a * kWarp;
        launch(kernel, grid_for(work), stream, p, plan.a, part);
      });
    } else if (plan.path == Path::Rows) {
      const int64_t wchunks = plan.a;
      dispatch_width<kRowsMaxWidth>(p.width, [&](auto wt) {
        constexpr int kW = decltype(wt)::kW;
        constexpr bool kExact = decltype(wt)::kExact;
        auto kernel = seq ? bwd_rows_kernel<X, kW, kExact, true>
                          : bwd_rows_kernel<X, kW, kExact, false>;
        launch(kernel, grid_for(B * D * wchunks * kWarp), stream, p, wchunks, plan.x_vec,
               plan.dout_vec, plan.dx_vec, part);
      });
    } else if (plan.path == Path::Chanlast) {
      constexpr int64_t E = 4;
      const bool x_vec = vector_aligned(p.x.data, sizeof(X), E, p.x.s0, B, p.x.s2, L);
      const bool dout_vec = (p.dout.s1 == 1 || D == 1) &&
                            vector_aligned(p.dout.data, sizeof(X), E, p.dout.s0, B, p.dout.s2, L);
      const bool dx_vec = (p.dx.s1 == 1 || D == 1) &&
                          vector_aligned(p.dx.data, sizeof(X), E, p.dx.s0, B, p.dx.s2, L);
      dispatch_width<kChanlastMaxWidth>(p.width, [&](auto wt) {
          constexpr int kW = decltype(wt)::kW;
          constexpr bool kExact = decltype(wt)::kExact;
        auto kernel = dispatch_flags(seq, p.silu, [](auto kseq, auto ksilu) {
          return bwd_chanlast_kernel<X, kW, kExact, decltype(kseq)::value, decltype(ksilu)::value>;
        });
        launch(kernel, grid_for(plan.slots * plan.a, 1), stream, p, plan.a, plan.b,
               static_cast<int>(plan.group), x_vec, dout_vec, dx_vec, part);
      });
    } else if (plan.path == Path::Generic) {
      launch(bwd_dy_kernel<X>, grid_for(B * D * L), stream, p, ws);
      launch(bwd_dx_generic_kernel<X>, grid_for(B * D * L), stream, p,
             static_cast<const float*>(ws), p.x.s2 <= p.x.s1);
      launch(bwd_dweight_generic_kernel<X>, grid_for(D * kThreads), stream, p,
             static_cast<const float*>(ws));
    }
    if (part != nullptr && (plan.path == Path::Rows || plan.path == Path::RowsTiled ||
                            plan.path == Path::Chanlast)) {
      const int64_t cols = D * (p.width + 1);
      launch(reduce_partials_kernel, grid_for(cols * kThreads / kWarp), stream, p,
             static_cast<const float*>(part), plan.slots);
    }
    if (p.dinitial_states.data != nullptr && p.width > 1) {
      launch(bwd_dinit_kernel<X>, grid_for(B * D * (p.width - 1)), stream, p);
    }
  });
}

}  // namespace causal_conv1d::cuda
