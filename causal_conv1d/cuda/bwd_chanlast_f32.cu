// The channel-last backward's kernels for fp32 x (bwd_chanlast.cuh).
#include "bwd_chanlast.cuh"

namespace causal_conv1d::cuda {

void launch_bwd_chanlast_f32(const ConvParams& p, int64_t cblocks, int64_t groups, int64_t group,
                             float* partials, cudaStream_t stream) {
  launch_bwd_chanlast_for<float>(p, cblocks, groups, group, partials, stream);
}

}  // namespace causal_conv1d::cuda
