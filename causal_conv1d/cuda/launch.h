// The kernel launchers of the CUDA backend (defined in the .cu files) and
// what launch.cpp needs to call them. launch.cpp implements backend.h's
// run_* functions: it takes torch's current stream, allocates workspaces
// through torch's caching allocator and turns launch errors into exceptions,
// so that the .cu files need no ATen headers.
#pragma once

#include <cstddef>

#include "../params.h"

#ifdef CAUSAL_CONV1D_CUDA_EMU
#include "cuda_emu.h"  // tests/cuda_emu/: on the emulator build's include path only
#else
#include <cuda_runtime_api.h>
#endif

namespace causal_conv1d::cuda {

void launch_fwd(const ConvParams& p, cudaStream_t stream);

// Bytes of device scratch launch_bwd needs for p (0 when none): per-tile
// partial sums of dweight/dbias in deterministic mode, or the recomputed
// output gradient on the generic path.
size_t bwd_workspace_bytes(const ConvParams& p);
void launch_bwd(const ConvParams& p, void* workspace, cudaStream_t stream);

void launch_update(const ConvParams& p, cudaStream_t stream);
void launch_update_serving(const ConvParams& p, cudaStream_t stream);
void launch_varlen_states(const ConvParams& p, cudaStream_t stream);
void launch_fwd_packed(const ConvParams& p, cudaStream_t stream);

}  // namespace causal_conv1d::cuda
