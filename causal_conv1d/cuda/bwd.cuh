// What the backward's translation units share: bwd.cu holds the plan and
// launch_bwd (see there for the maths and the layouts); each layout's kernels
// and their launcher live in files of their own (bwd_rows.cu; the chanlast
// kernel in bwd_chanlast.cuh, instantiated one dtype of x per file in
// bwd_chanlast_f32.cu, _f16.cu and _bf16.cu), so that the build compiles them
// in parallel; the generic layout's few small kernels stay in bwd.cu. The
// launchers take the plan's numbers as plain arguments and instantiate their
// kernels for p's dtype and width.
#pragma once

#include "launch.h"
#include "rows.cuh"

namespace causal_conv1d::cuda {

constexpr int kRowsMaxWidth = 16;
constexpr int kChanlastMaxWidth = 8;

// Time steps per warp of a channel-last backward tile (4 warps to a tile),
// by the element size of x.
__host__ __device__ constexpr int bwd_chanlast_steps_per_warp(int elem_bytes) {
  return elem_bytes == 4 ? 8 : 16;
}

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

// The layouts' launchers. partials: the per-slot dweight/dbias partial sums
// of deterministic mode ([slots][D][W+1], summed by bwd.cu afterwards), or
// nullptr to add them atomically.

// rows: wchunks warp chunks of 32 * 16 bytes per row; x_vec, dout_vec,
// dx_vec: whether 16-byte vector accesses are allowed.
void launch_bwd_rows(const ConvParams& p, int64_t wchunks, bool x_vec, bool dout_vec, bool dx_vec,
                     float* partials, cudaStream_t stream);

// rows_tiled (W in {2, 3, 4}): tiles per row of `vectors` vectors per lane
// (tile_vectors(kBwdTilePositions, element size), or 1 for short rows).
void launch_bwd_rows_tiled(const ConvParams& p, int64_t tiles, int64_t vectors, float* partials,
                           cudaStream_t stream);

// chanlast: cblocks blocks of 128 channels; groups groups of `group` time
// tiles per batch. Defined in bwd.cu: calls the launcher for p's dtype of x,
// one per file (bwd_chanlast_f32.cu, _f16.cu, _bf16.cu), with the same
// arguments.
void launch_bwd_chanlast(const ConvParams& p, int64_t cblocks, int64_t groups, int64_t group,
                         float* partials, cudaStream_t stream);
decltype(launch_bwd_chanlast) launch_bwd_chanlast_f32, launch_bwd_chanlast_f16,
    launch_bwd_chanlast_bf16;

}  // namespace causal_conv1d::cuda
