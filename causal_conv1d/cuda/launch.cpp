// backend.h's entry points for CUDA: the one host file of the backend that
// talks to torch. It launches on torch's current stream (ops.cpp already
// holds a device guard for x's device), allocates scratch memory through
// torch's caching allocator, and reports launch errors with the op's name.

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#ifndef CAUSAL_CONV1D_CUDA_EMU
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "../backend.h"
#include "launch.h"

namespace causal_conv1d {
namespace {

#ifdef CAUSAL_CONV1D_CUDA_EMU
cudaStream_t current_stream() { return nullptr; }
at::Tensor scratch(size_t bytes) { return at::empty({static_cast<int64_t>(bytes)}, at::kByte); }
void check_launch(const char*) {}
#else
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor scratch(size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes)},
                   at::TensorOptions().dtype(at::kByte).device(at::kCUDA, c10::cuda::current_device()));
}

void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "causal_conv1d: launching the CUDA kernels of ", op,
              " failed: ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
}
#endif

}  // namespace

const char* kernel_tier() { return "cuda"; }

void run_fwd(const ConvParams& p) {
  cuda::launch_fwd(p, current_stream());
  check_launch("causal_conv1d_fn (forward)");
}

void run_bwd(const ConvParams& p) {
  const size_t bytes = cuda::bwd_workspace_bytes(p);
  at::Tensor ws = bytes > 0 ? scratch(bytes) : at::Tensor();
  cuda::launch_bwd(p, bytes > 0 ? ws.data_ptr() : nullptr, current_stream());
  check_launch("causal_conv1d_fn (backward)");
}

void run_update(const ConvParams& p) {
  cuda::launch_update(p, current_stream());
  check_launch("causal_conv1d_update");
}

void run_update_serving(const ConvParams& p) {
  cuda::launch_update_serving(p, current_stream());
  check_launch("causal_conv1d_update");
}

void run_varlen_states(const ConvParams& p) {
  cuda::launch_varlen_states(p, current_stream());
  check_launch("causal_conv1d_varlen_states");
}

void run_fwd_packed(const ConvParams& p) {
  cuda::launch_fwd_packed(p, current_stream());
  check_launch("causal_conv1d_packed_fwd");
}

}  // namespace causal_conv1d
