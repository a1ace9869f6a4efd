// The backward's channel-last layout (x.s1 == 1): the chanlast kernel and
// its launcher for one dtype of x, launch_bwd_chanlast_for<X>. bwd.cu
// describes the backward and picks the layout; bwd_chanlast_f32.cu, _f16.cu
// and _bf16.cu each instantiate one dtype's kernels, so that the build
// compiles the three in parallel (one file held all 48 kernels and was the
// build's long pole).
//
// Everything here is in an anonymous namespace: each of those translation
// units gets its own copy with internal linkage (an external kernel template
// instantiated in several of them would be one host stub, merged by the
// linker, for several device copies; here nothing is shared, and nothing can
// clash at link time), and the kernels keep their names
// (causal_conv1d::cuda::(anonymous namespace)::bwd_chanlast_kernel<...>),
// which the profiles match. Each file's exported launcher is a plain
// function (declared in bwd.cuh), not an instantiation of a template defined
// here, so no definition with external linkage names these internal entities
// (which the ODR does not allow for a definition in several files).
#pragma once

#include "bwd.cuh"

namespace causal_conv1d::cuda {
namespace {

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
  constexpr int kSteps = bwd_chanlast_steps_per_warp(sizeof(X));
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
      // with constant bounds, one straight block without the bounds tests
      // that would otherwise dominate a step's instructions; other tiles
      // test the bounds per step.
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

// Launches the chanlast kernel for x of type X (see launch_bwd_chanlast).
template <typename X>
void launch_bwd_chanlast_for(const ConvParams& p, int64_t cblocks, int64_t groups, int64_t group,
                             float* partials, cudaStream_t stream) {
  const int64_t B = p.batch, D = p.dim, L = p.seqlen;
  const bool seq = p.seq_idx.data != nullptr;
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
    launch(kernel, grid_for(B * groups * cblocks, 1), stream, p, cblocks, groups,
           static_cast<int>(group), x_vec, dout_vec, dx_vec, partials);
  });
}

}  // namespace
}  // namespace causal_conv1d::cuda
