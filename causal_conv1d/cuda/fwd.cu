// Forward (backend.h run_fwd) on CUDA.
//
// Three kernels compute `out`, chosen by x's layout:
//   rows      x contiguous along L (x.s2 == 1): a thread computes E = 16 bytes
//             of consecutive outputs of one row from one aligned vector load
//             plus the vectors before it (the halo comes from L1/L2, not DRAM).
//             For W <= 4 without seq_idx on aligned rows of >= 512 bytes,
//             rows_tiled: a warp owns 32 * C vectors of a row, halos by shuffle;
//             for 16-bit x rows_piped, the same tiles on one resident wave with
//             the next tile's loads in flight (cp.async) during this one's.
//   chanlast  x channel-last (x.s1 == 1, also slices of a wider projection):
//             a block stages a (64 + W-1) x 32E tile in shared memory with all
//             its loads in flight, then a lane computes E consecutive channels
//             (16 bytes) per time step; a warp's loads and stores cover 512
//             contiguous bytes.
//   generic   any strides: one output per thread, read through rows.cuh.
// final_states come from a small separate kernel in every layout.
// make_fwd_plan picks the kernel and its launch numbers from the params
// alone; launch_fwd launches the plan for x's dtype.
#include "launch.h"
#include "rows.cuh"

namespace causal_conv1d::cuda {
namespace {

// ---------------------------------------------------------------------------
// rows: x.s2 == 1 (or L == 1)

template <typename X, int kW, bool kExact, bool kSeq>
__global__ void __launch_bounds__(kThreads)
    fwd_rows_kernel(ConvParams p, int64_t chunks, bool x_vec, bool out_vec) {
  constexpr int E = kVec16<X>;
  constexpr int NP = (kW - 1 + E - 1) / E;  // vectors before the chunk
  constexpr int O = NP * E;                 // window index of the chunk's first token
  constexpr int N = O + E;                  // window: positions t0 - O .. t0 + E - 1
  const int64_t D = p.dim, L = p.seqlen;
  const int W = kExact ? kW : static_cast<int>(p.width);
  const int64_t total = p.batch * D * chunks;
  for (int64_t g = global_thread(); g < total; g += grid_threads()) {
    const int64_t row = g / chunks;
    const int64_t t0 = (g - row * chunks) * E;
    const int64_t b = row / D, d = row - b * D;
    const X* xr = ptr<const X>(p.x) + b * p.x.s0 + d * p.x.s1;

    // wr[k] multiplies the input k positions back.
    float wr[kW];
#pragma unroll
    for (int k = 0; k < kW; ++k) wr[k] = (kExact || k < W) ? weight_at(p, d, W - 1 - k) : 0.f;
    const float bias = bias_at(p, d);

    float win[N];
    load_row_window<NP + 1, E>(win, p, xr, b, d, t0, O, W, x_vec, [&](int64_t base) {
      return base + E > t0 - (W - 1);  // overlaps [t0 - (W-1), t0 + E)
    });
    int32_t ids[kSeq ? N : 1];
    if constexpr (kSeq) {
      const int32_t* sr = ptr<const int32_t>(p.seq_idx) + b * p.seq_idx.s0;
      const int32_t first = sr[0];
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const int64_t pos = t0 - O + i;
        ids[i] = (pos < t0 - (W - 1) || pos >= L) ? -1 : pos < 0 ? first : sr[pos * p.seq_idx.s1];
      }
    }

    float res[E];
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int32_t tok = kSeq ? ids[O + j] : 0;
      float acc = bias;
#pragma unroll
      for (int k = 0; k < kW; ++k) {
        if (kExact || k < W) {
          if (!kSeq || ids[O + j - k] == tok) acc += wr[k] * win[O + j - k];
        }
      }
      float v = p.silu ? silu_out<X>(acc) : acc;
      if (kSeq && tok < 0) v = 0.f;
      res[j] = v;
    }

    store_chunk(ptr<X>(p.out) + b * p.out.s0 + d * p.out.s1, t0, L, p.out.s2, out_vec, res);
  }
}

// ---------------------------------------------------------------------------
// rows_tiled: the rows layout with 16-byte aligned rows, W in {2, 3, 4}, no
// seq_idx and rows of at least one tile: a warp owns a WarpTile (32 * C
// vectors), so the loads and stores of a warp are 512 contiguous bytes, the
// W-1 inputs before a vector come from the neighbouring lane by a shuffle
// instead of a second load, and the weights, bias and index math are paid
// once per tile instead of once per vector.

// res: the outputs at vector q of a warp tile whose vectors (tile.v) and
// edges are unpacked; the rows_tiled and rows_piped kernels' arithmetic.
template <typename X, int kW, int C>
__device__ __forceinline__ void tile_vector_outputs(const ConvParams& p, const WarpTile<X, C>& tile,
                                                    const TileEdges<X, kW, false>& edges, int q,
                                                    float (&res)[WarpTile<X, C>::E]) {
  constexpr int E = WarpTile<X, C>::E, H = kW - 1;
  static_assert(H >= 1 && H <= E, "the inputs before a vector come from one neighbour");
  float prev[H];
  lanes_before(tile.v, q, tile.lane, edges.head, prev);
#pragma unroll
  for (int j = 0; j < E; ++j) {
    float acc = edges.bias;
#pragma unroll
    for (int k = 0; k < kW; ++k)
      acc += edges.wr[k] * (j - k >= 0 ? tile.v[q][j - k] : prev[H + j - k]);
    res[j] = p.silu ? silu_out<X>(acc) : acc;
  }
}

template <typename X, int kW, int C>
__global__ void __launch_bounds__(kThreads) fwd_rows_tiled_kernel(ConvParams p, int64_t tiles) {
  using Tile = WarpTile<X, C>;
  const int64_t D = p.dim, L = p.seqlen;
  const int64_t total = p.batch * D * tiles;
  Tile tile;
  TileEdges<X, kW, false> edges;
  tile.lane = threadIdx.x % kWarp;
  for_each_tile(total, tiles, D, Tile::kLen, [&](const TileAt& at) {
    {  // every load of the tile in flight before the first wait
      const X* xr = ptr<const X>(p.x) + at.b * p.x.s0 + at.d * p.x.s1;
      tile.fetch(xr, at.t0, L);
      edges.fetch(p, at.b, at.d, at.t0, at.t0 + Tile::kLen, xr, nullptr);
      tile.unpack(at.t0);
      edges.unpack(p);
    }
    float res[C][Tile::E];  // all computed, then all stored (fp32: fewer registers than
#pragma unroll            // rows_piped's store per vector)
    for (int q = 0; q < C; ++q) tile_vector_outputs(p, tile, edges, q, res[q]);
    tile.store(ptr<X>(p.out) + at.b * p.out.s0 + at.d * p.out.s1, L, res);
  });
}

// rows_piped: rows_tiled for 16-bit x on one resident wave, each warp
// looping over tiles with the next tile's vectors copied into shared memory
// by cp.async while it computes this one. The copies in flight hold no
// registers, unlike a register prefetch (which lost: the registers it held
// halved the resident warps). A lane reads back only the slots it copied,
// so the warp needs no barrier. The next tile's edges (taps, bias, the
// inputs before it) are plain loads issued with the copies. It pays off for
// 16-bit x only: fp32 tiles already carry enough bytes per load, and were
// faster in rows_tiled.

template <typename X, int kW, int C>
__global__ void __launch_bounds__(kThreads) fwd_rows_piped_kernel(ConvParams p, int64_t tiles) {
  using Tile = WarpTile<X, C>;
  constexpr int E = Tile::E;
  using V = Pack<X, E>;
  __shared__ V stage[2][kThreads / kWarp][C][kWarp];  // [buffer][warp][q][lane]
  const int64_t D = p.dim, L = p.seqlen;
  const int64_t total = p.batch * D * tiles, step = grid_threads() / kWarp;
  const int warp = threadIdx.x / kWarp;
  Tile tile;
  TileEdges<X, kW, false> edges;
  tile.lane = threadIdx.x % kWarp;

  // Issues every load of tile wg: its vectors into stage[buf], its edges.
  auto issue = [&](int64_t wg, int buf) {
    const TileAt at = tile_at(wg, tiles, D, Tile::kLen);
    const X* xr = ptr<const X>(p.x) + at.b * p.x.s0 + at.d * p.x.s1;
#pragma unroll
    for (int q = 0; q < C; ++q) {
      const int64_t pos = tile.position(at.t0, q);
      V* slot = &stage[buf][warp][q][tile.lane];
      if (pos + E <= L) {
        copy_async(slot, reinterpret_cast<const V*>(xr + pos));
      } else {  // the row's end: element loads, zeros past L
        V v;
#pragma unroll
        for (int e = 0; e < E; ++e) v.v[e] = pos + e < L ? xr[pos + e] : from_f<X>(0.f);
        *slot = v;
      }
    }
    edges.fetch(p, at.b, at.d, at.t0, at.t0 + Tile::kLen, xr, nullptr);
  };

  int64_t wg = global_thread() / kWarp;
  if (wg < total) issue(wg, 0);
  copy_async_commit();
  for (int buf = 0; wg < total; wg += step, buf ^= 1) {
    const TileAt at = tile_at(wg, tiles, D, Tile::kLen);
    edges.unpack(p);  // this tile's edges, before issue() loads the next one's
    if (wg + step < total) issue(wg + step, buf ^ 1);
    copy_async_commit();
    copy_async_wait_prior<1>();  // this tile's copies have landed
#pragma unroll
    for (int q = 0; q < C; ++q) tile.raw[q] = stage[buf][warp][q][tile.lane];
    tile.unpack(at.t0);
    X* orow = ptr<X>(p.out) + at.b * p.out.s0 + at.d * p.out.s1;
#pragma unroll
    for (int q = 0; q < C; ++q) {  // each vector stored as soon as computed
      float res[E];
      tile_vector_outputs(p, tile, edges, q, res);
      tile.store_vector(orow, L, q, res);
    }
  }
}

// ---------------------------------------------------------------------------
// chanlast: x.s1 == 1 (or D == 1), widths up to 8. A block owns 32 * E
// channels of a 64-step time tile: it first loads the tile and its W-1
// rows of history into shared memory (every load of the block in flight at
// once), then each warp computes 16 consecutive time steps, a lane E
// channels. The step loop is unrolled and slides a window of the last W
// input rows, already converted to float, through registers: a step reads
// one new row from shared memory and converts it once, instead of W rows W
// times (for bf16 the conversions, not the bytes, were the limit).

constexpr int kFwdStepsPerWarp = 16;

template <typename X, int kW, bool kExact, bool kSeq>
__global__ void __launch_bounds__(kThreads)
    fwd_chanlast_kernel(ConvParams p, int64_t cblocks, int64_t tiles, bool x_vec, bool out_vec) {
  constexpr int E = kVec16<X>;
  constexpr int CB = kWarp * E;                                  // channels per block
  constexpr int TT = (kThreads / kWarp) * kFwdStepsPerWarp;      // time steps per block
  constexpr int R = TT + kW - 1;                                 // tile rows
  using V = Pack<X, E>;
  __shared__ V tile[R][kWarp];
  __shared__ int32_t tile_ids[kSeq ? R : 1];

  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t D = p.dim, L = p.seqlen;
  const int W = kExact ? kW : static_cast<int>(p.width);
  const int64_t total = p.batch * tiles * cblocks;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t cb = blk % cblocks, r = blk / cblocks;
    const int64_t b = r / tiles, t0 = (r % tiles) * TT;
    const int64_t c0 = cb * CB, row0 = t0 - (W - 1);  // tile row i is position row0 + i
    const int64_t t_end = t0 + TT < L ? t0 + TT : L;
    const int rows = static_cast<int>(t_end - row0);
    const X* xb = ptr<const X>(p.x) + b * p.x.s0;

    // Lane l's channels: E from d0 = c0 + l*E, ne of them real.
    const int64_t d0 = c0 + lane * E;
    const int ne = D - d0 >= E ? E : D - d0 > 0 ? static_cast<int>(D - d0) : 0;
    // Tile row i: position row0 + i; warp w loads rows w, w + 4, ..., lane l
    // its channels: x, or the initial state before position 0.
    for (int i = warp; i < rows; i += kThreads / kWarp) {
      const int64_t pos = row0 + i;
      if (pos >= 0 && x_vec && ne == E) {
        copy_async(&tile[i][lane], reinterpret_cast<const V*>(xb + pos * p.x.s2 + d0));
      } else {
        tile[i][lane] = channels_at<X, E>(p, p.x, b, pos, d0, ne);
      }
    }
    // The taps while the tile is in flight (the wait below is for both).
    float wr[kW][E] = {}, bias[E] = {};  // wr[k]: the tap k positions back
    if (ne > 0) channel_taps(p, d0, ne, kExact ? kW : W, wr, bias);
    copy_async_wait();
    if constexpr (kSeq) {
      const int32_t* sr = ptr<const int32_t>(p.seq_idx) + b * p.seq_idx.s0;
      for (int i = threadIdx.x; i < rows; i += kThreads) {
        const int64_t pos = row0 + i;
        tile_ids[i] = pos < 0 ? sr[0] : sr[pos * p.seq_idx.s1];
      }
    }
    __syncthreads();

    const int64_t tw = t0 + warp * kFwdStepsPerWarp;  // the warp's first step
    const int steps = t_end - tw < kFwdStepsPerWarp ? static_cast<int>(t_end - tw) : kFwdStepsPerWarp;
    if (ne > 0 && steps > 0) {
      // xw[k]: the input k positions before the current step. Taps k >= W
      // (runtime width) are never read. Segment ids stay in shared memory
      // (one broadcast load per tap; registers are the scarcer resource).
      const int i0 = static_cast<int>(tw - row0);
      float xw[kW][E];
      auto load_row = [&](int k, int i) {  // tile row i into window slot k
        const bool used = kExact || k < W;
        const V v = used ? tile[i][lane] : V{};
#pragma unroll
        for (int e = 0; e < E; ++e) xw[k][e] = used ? to_f(v.v[e]) : 0.f;
      };
#pragma unroll
      for (int k = 1; k < kW; ++k) load_row(k, i0 - k);
      X* dst = ptr<X>(p.out) + b * p.out.s0 + tw * p.out.s2 + d0 * p.out.s1;
      // Full tiles (every step before L, vector stores) take a copy of the step
      // loop with constant bounds: one straight block whose steps the compiler
      // interleaves, where a bound test per step would serialise them.
      auto walk = [&](auto full) {
        constexpr bool kFull = decltype(full)::value;
        const int steps_ = kFull ? kFwdStepsPerWarp : steps;
#pragma unroll
        for (int s = 0; s < kFwdStepsPerWarp; ++s) {
          if (s == steps_) break;  // the same for the whole warp
          const int i = i0 + s;
          load_row(0, i);
          const int32_t tok = kSeq ? tile_ids[i] : 0;
          float acc[E];
#pragma unroll
          for (int e = 0; e < E; ++e) acc[e] = bias[e];
#pragma unroll
          for (int k = 0; k < kW; ++k) {
            if ((kExact || k < W) && (!kSeq || tile_ids[i - k] == tok)) {
#pragma unroll
              for (int e = 0; e < E; ++e) acc[e] += wr[k][e] * xw[k][e];
            }
          }
          V o;
#pragma unroll
          for (int e = 0; e < E; ++e) {
            float y = p.silu ? silu_out<X>(acc[e]) : acc[e];
            if (kSeq && tok < 0) y = 0.f;
            o.v[e] = from_f<X>(y);
          }
          store_channels(dst, o, kFull || (out_vec && ne == E), ne, p.out.s1);
          dst += p.out.s2;
          // Slide the window; the loop is unrolled, so this only renames registers.
#pragma unroll
          for (int k = kW - 1; k > 0; --k) {
#pragma unroll
            for (int e = 0; e < E; ++e) xw[k][e] = xw[k - 1][e];
          }
        }
      };
      if constexpr (kExact && !kSeq) {
        if (steps == kFwdStepsPerWarp && out_vec && ne == E) {
          walk(std::true_type{});
        } else {
          walk(std::false_type{});
        }
      } else {
        walk(std::false_type{});
      }
    }
    __syncthreads();  // the next tile overwrites shared memory
  }
}

// ---------------------------------------------------------------------------
// generic: any strides, any width

template <typename X>
__global__ void __launch_bounds__(kThreads) fwd_generic_kernel(ConvParams p, bool t_fastest) {
  const int64_t D = p.dim, L = p.seqlen;
  const int64_t total = p.batch * D * L;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const ElementAt at = element_at(i, D, L, t_fastest);
    const int64_t b = at.b, d = at.d, t = at.t;
    const Row<X> row = make_row<X>(p, b, d);
    float v = 0.f;
    if (!row.seq || row.id(t) >= 0) {
      const float y = y_at(p, row, t);
      v = p.silu ? silu_out<X>(y) : y;
    }
    ptr<X>(p.out)[b * p.out.s0 + d * p.out.s1 + t * p.out.s2] = from_f<X>(v);
  }
}

// final_states[b, d, j] = the input at position L - (W-1) + j, as the last
// token's segment sees it (zeros across a boundary). Also right for L == 0.
template <typename X>
__global__ void __launch_bounds__(kThreads) fwd_final_states_kernel(ConvParams p) {
  const int64_t D = p.dim, H = p.width - 1, L = p.seqlen;
  const int64_t total = p.batch * D * H;
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t j = i % H, r = i / H;
    const int64_t d = r % D, b = r / D;
    const Row<X> row = make_row<X>(p, b, d);
    ptr<X>(p.final_states)[b * p.final_states.s0 + d * p.final_states.s1 +
                           j * p.final_states.s2] = row.in_raw(L - H + j, row.last_id);
  }
}

// ---------------------------------------------------------------------------
// plan: which kernel computes `out`, and the numbers its launch needs. Chosen
// from p alone (make_fwd_plan), then launched for p's dtype (launch_fwd).

enum class FwdPath { None, Rows, RowsTiled, RowsPiped, Chanlast, Generic };

struct FwdPlan {
  FwdPath path = FwdPath::None;  // None: L == 0, no output to compute
  // rows: 16-byte vectors per row (E positions each).
  int64_t row_vectors = 0;
  // rows_tiled / rows_piped: warp tiles per row, and the 16-byte vectors a
  // lane owns in each (tile_vectors(kFwdTilePositions, ...) on rows of at
  // least one such tile, else 1).
  int64_t row_tiles = 0;
  int lane_vectors = 0;
  // chanlast: blocks of 32 * E channels, and time tiles (of 4 warps'
  // kFwdStepsPerWarp steps) per batch.
  int64_t channel_blocks = 0, time_tiles = 0;
  // rows, chanlast: whether x and out allow 16-byte vector accesses.
  bool x_vec = false, out_vec = false;
  // generic: the walk's fastest index is t (else d), as x's strides suggest.
  bool t_fastest = false;
  // final_states wanted (and there is something to copy: W > 1).
  bool final_states = false;
};

FwdPlan make_fwd_plan(const ConvParams& p) {
  FwdPlan plan;
  const int64_t B = p.batch, D = p.dim, L = p.seqlen, W = p.width;
  const int elem = p.x_dtype == DType::Float32 ? 4 : 2;  // as dispatch_x: no fp64 here
  const int64_t E = 16 / elem;
  plan.final_states = p.final_states.data != nullptr && W > 1;
  if (L == 0) return plan;
  if (p.x.s2 == 1 || L == 1) {
    plan.x_vec = vector_aligned(p.x.data, elem, E, p.x.s0, B, p.x.s1, D);
    plan.out_vec = (p.out.s2 == 1 || L == 1) &&
                   vector_aligned(p.out.data, elem, E, p.out.s0, B, p.out.s1, D);
    const int64_t tile1 = kWarp * E;  // a tile of one vector per lane
    // The tiled kernels need whole aligned vectors of x and out, and at
    // least one tile (so L > 1 and out_vec means out.s2 == 1).
    if (p.seq_idx.data == nullptr && plan.x_vec && plan.out_vec && W >= 2 && W <= 4 &&
        L >= tile1) {
      const int C = tile_vectors(kFwdTilePositions, elem);
      plan.path = elem == 2 ? FwdPath::RowsPiped : FwdPath::RowsTiled;
      plan.lane_vectors = L >= C * tile1 ? C : 1;
      const int64_t len = plan.lane_vectors * tile1;
      plan.row_tiles = (L + len - 1) / len;
    } else {
      plan.path = FwdPath::Rows;
      plan.row_vectors = (L + E - 1) / E;
    }
  } else if ((p.x.s1 == 1 || D == 1) && W <= 8) {
    const int64_t CB = kWarp * E, TT = (kThreads / kWarp) * kFwdStepsPerWarp;
    plan.path = FwdPath::Chanlast;
    plan.channel_blocks = (D + CB - 1) / CB;
    plan.time_tiles = (L + TT - 1) / TT;
    plan.x_vec = vector_aligned(p.x.data, elem, E, p.x.s0, B, p.x.s2, L);
    plan.out_vec = (p.out.s1 == 1 || D == 1) &&
                   vector_aligned(p.out.data, elem, E, p.out.s0, B, p.out.s2, L);
  } else {
    plan.path = FwdPath::Generic;
    plan.t_fastest = p.x.s2 <= p.x.s1;
  }
  return plan;
}

// One launcher per path, for x of type X: the kernel for p's width, on the
// grid the plan's numbers give.

template <typename X>
void launch_rows(const ConvParams& p, const FwdPlan& plan, cudaStream_t stream) {
  dispatch_width<32>(p.width, [&](auto wt) {
    constexpr int kW = decltype(wt)::kW;
    constexpr bool kExact = decltype(wt)::kExact;
    auto kernel = p.seq_idx.data != nullptr ? fwd_rows_kernel<X, kW, kExact, true>
                                            : fwd_rows_kernel<X, kW, kExact, false>;
    launch(kernel, grid_for(p.batch * p.dim * plan.row_vectors), stream, p, plan.row_vectors,
           plan.x_vec, plan.out_vec);
  });
}

template <typename X>
void launch_rows_tiled(const ConvParams& p, const FwdPlan& plan, cudaStream_t stream) {
  constexpr int C = tile_vectors(kFwdTilePositions, sizeof(X));
  const int64_t work = p.batch * p.dim * plan.row_tiles * kWarp;
  dispatch_exact_width(p.width, [&](auto wt) {
    constexpr int kW = decltype(wt)::kW;
    auto kernel = plan.lane_vectors == 1 ? fwd_rows_tiled_kernel<X, kW, 1>
                                         : fwd_rows_tiled_kernel<X, kW, C>;
    launch(kernel, grid_for(work), stream, p, plan.row_tiles);
  });
}

// One resident wave (resident_grid is per kernel, so each gets its own).
template <typename X>
void launch_rows_piped(const ConvParams& p, const FwdPlan& plan, cudaStream_t stream) {
  constexpr int C = tile_vectors(kFwdTilePositions, sizeof(X));
  const int64_t work = p.batch * p.dim * plan.row_tiles * kWarp;
  dispatch_exact_width(p.width, [&](auto wt) {
    constexpr int kW = decltype(wt)::kW;
    constexpr auto kFull = fwd_rows_piped_kernel<X, kW, C>;
    constexpr auto kShort = fwd_rows_piped_kernel<X, kW, 1>;
    if (plan.lane_vectors == 1) {
      launch(kShort, resident_grid<kShort>(work), stream, p, plan.row_tiles);
    } else {
      launch(kFull, resident_grid<kFull>(work), stream, p, plan.row_tiles);
    }
  });
}

template <typename X>
void launch_chanlast(const ConvParams& p, const FwdPlan& plan, cudaStream_t stream) {
  dispatch_width<8>(p.width, [&](auto wt) {
    constexpr int kW = decltype(wt)::kW;
    constexpr bool kExact = decltype(wt)::kExact;
    auto kernel = p.seq_idx.data != nullptr ? fwd_chanlast_kernel<X, kW, kExact, true>
                                            : fwd_chanlast_kernel<X, kW, kExact, false>;
    launch(kernel, grid_for(p.batch * plan.time_tiles * plan.channel_blocks, 1), stream, p,
           plan.channel_blocks, plan.time_tiles, plan.x_vec, plan.out_vec);
  });
}

}  // namespace

void launch_fwd(const ConvParams& p, cudaStream_t stream) {
  const FwdPlan plan = make_fwd_plan(p);
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    switch (plan.path) {
      case FwdPath::Rows: launch_rows<X>(p, plan, stream); break;
      // make_fwd_plan picks rows_tiled for fp32 x and rows_piped for 16-bit
      // x: neither kernel is instantiated for the other element size.
      case FwdPath::RowsTiled:
        if constexpr (sizeof(X) == 4) launch_rows_tiled<X>(p, plan, stream);
        break;
      case FwdPath::RowsPiped:
        if constexpr (sizeof(X) == 2) launch_rows_piped<X>(p, plan, stream);
        break;
      case FwdPath::Chanlast: launch_chanlast<X>(p, plan, stream); break;
      case FwdPath::Generic:
        launch(fwd_generic_kernel<X>, grid_for(p.batch * p.dim * p.seqlen), stream, p,
               plan.t_fastest);
        break;
      case FwdPath::None: break;
    }
    if (plan.final_states) {
      launch(fwd_final_states_kernel<X>, grid_for(p.batch * p.dim * (p.width - 1)), stream, p);
    }
  });
}

}  // namespace causal_conv1d::cuda
