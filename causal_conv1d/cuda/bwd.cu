// Backward (backend.h run_bwd) on CUDA: the plan and launch_bwd, the
// deterministic sum of the partials, the generic layout and dinitial_states.
// The other layouts' kernels are in bwd_rows.cu (rows, rows_tiled) and
// bwd_chanlast.cuh (chanlast; compiled one dtype of x per file,
// bwd_chanlast_f32.cu, _f16.cu and _bf16.cu).
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
#include "bwd.cuh"

namespace causal_conv1d::cuda {
namespace {

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
    const ElementAt at = element_at(i, D, L, t_fastest);
    const int64_t b = at.b, d = at.d, t = at.t;
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

// The generic layout's kernels in order; dy: the workspace, B * D * L floats.
void launch_bwd_generic(const ConvParams& p, float* dy, cudaStream_t stream) {
  dispatch_x(p.x_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    const int64_t B = p.batch, D = p.dim, L = p.seqlen;
    launch(bwd_dy_kernel<X>, grid_for(B * D * L), stream, p, dy);
    launch(bwd_dx_generic_kernel<X>, grid_for(B * D * L), stream, p, static_cast<const float*>(dy),
           p.x.s2 <= p.x.s1);
    launch(bwd_dweight_generic_kernel<X>, grid_for(D * kThreads), stream, p,
           static_cast<const float*>(dy));
  });
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
  // rows: chunks of a warp's 32 * E positions per row.
  int64_t warp_chunks = 0;
  // rows_tiled: warp tiles per row, and the 16-byte vectors a lane owns in
  // each (tile_vectors(kBwdTilePositions, ...) on rows of at least that many
  // tiles' positions, else 1).
  int64_t row_tiles = 0, lane_vectors = 0;
  // chanlast: blocks of kThreads channels, and per batch the groups of
  // `group` time tiles a block walks before it emits its partials.
  int64_t channel_blocks = 0, tile_groups = 0, group = 1;
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
      plan.lane_vectors = L >= vectors * tile1 ? vectors : 1;
      plan.row_tiles = (L + plan.lane_vectors * tile1 - 1) / (plan.lane_vectors * tile1);
      plan.slots = B * plan.row_tiles;
    } else {
      plan.path = Path::Rows;
      plan.warp_chunks = (L + kWarp * E - 1) / (kWarp * E);
      plan.slots = B * plan.warp_chunks;
    }
  } else if ((p.x.s1 == 1 || D == 1) && W <= kChanlastMaxWidth) {
    const int64_t CB = kThreads, TT = (kThreads / kWarp) * bwd_chanlast_steps_per_warp(elem);
    plan.path = Path::Chanlast;
    plan.channel_blocks = (D + CB - 1) / CB;
    const int64_t tiles = (L + TT - 1) / TT;
    plan.group = chanlast_group(B * tiles * plan.channel_blocks);
    plan.tile_groups = (tiles + plan.group - 1) / plan.group;
    plan.slots = B * plan.tile_groups;
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

void launch_bwd_chanlast(const ConvParams& p, int64_t cblocks, int64_t groups, int64_t group,
                         float* partials, cudaStream_t stream) {
  switch (p.x_dtype) {  // as dispatch_x
    case DType::Float16:
      return launch_bwd_chanlast_f16(p, cblocks, groups, group, partials, stream);
    case DType::BFloat16:
      return launch_bwd_chanlast_bf16(p, cblocks, groups, group, partials, stream);
    default:
      return launch_bwd_chanlast_f32(p, cblocks, groups, group, partials, stream);
  }
}

void launch_bwd(const ConvParams& p, void* workspace, cudaStream_t stream) {
  const Plan plan = make_plan(p);
  float* ws = static_cast<float*>(workspace);
  float* part = p.deterministic ? ws : nullptr;
  if (plan.path == Path::RowsTiled) {
    launch_bwd_rows_tiled(p, plan.row_tiles, plan.lane_vectors, part, stream);
  } else if (plan.path == Path::Rows) {
    launch_bwd_rows(p, plan.warp_chunks, plan.x_vec, plan.dout_vec, plan.dx_vec, part, stream);
  } else if (plan.path == Path::Chanlast) {
    launch_bwd_chanlast(p, plan.channel_blocks, plan.tile_groups, plan.group, part, stream);
  } else if (plan.path == Path::Generic) {
    launch_bwd_generic(p, ws, stream);
  }
  if (part != nullptr && (plan.path == Path::Rows || plan.path == Path::RowsTiled ||
                          plan.path == Path::Chanlast)) {
    const int64_t cols = p.dim * (p.width + 1);
    launch(reduce_partials_kernel, grid_for(cols * kThreads / kWarp), stream, p,
           static_cast<const float*>(part), plan.slots);
  }
  if (p.dinitial_states.data != nullptr && p.width > 1) {
    dispatch_x(p.x_dtype, [&](auto xt) {
      using X = typename decltype(xt)::type;
      launch(bwd_dinit_kernel<X>, grid_for(p.batch * p.dim * (p.width - 1)), stream, p);
    });
  }
}

}  // namespace causal_conv1d::cuda
