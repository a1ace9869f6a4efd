// The one argument-check layer: every operator turns its tensors into a
// ConvParams here, and every bad input is refused here with a message that
// names the argument and what was expected. Backends trust the result.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

#include "params.h"

namespace causal_conv1d {

// Largest supported convolution width (all backends).
constexpr int64_t kMaxWidth = 32;

using OptTensorRef = const std::optional<at::Tensor>&;

// Forward: validates inputs and the outputs the caller provides (out must be
// (B, D, L) of x's dtype, final_states (B, D, W-1); neither may overlap an input).
ConvParams fwd_params(const at::Tensor& x, const at::Tensor& weight, OptTensorRef bias,
                      OptTensorRef seq_idx, OptTensorRef initial_states, const at::Tensor& out,
                      OptTensorRef final_states, bool silu);

// Backward: the forward's inputs plus dout (and dfinal_states); outputs are
// dx, dinitial_states (when initial_states is given) and the fp32/fp64
// accumulators dweight_acc (D, W) and dbias_acc (D,) (when bias is given).
ConvParams bwd_params(const at::Tensor& x, const at::Tensor& weight, OptTensorRef bias,
                      OptTensorRef seq_idx, OptTensorRef initial_states, const at::Tensor& dout,
                      OptTensorRef dfinal_states, const at::Tensor& dx,
                      OptTensorRef dinitial_states, const at::Tensor& dweight_acc,
                      OptTensorRef dbias_acc, bool silu, bool deterministic);

// Decode: x is (B, D, L), or (B, D) for one token per row; out like x.
ConvParams update_params(const at::Tensor& x, const at::Tensor& conv_state,
                         const at::Tensor& weight, OptTensorRef bias, OptTensorRef cache_seqlens,
                         OptTensorRef conv_state_indices, const at::Tensor& out, bool silu);

// x (T, D), cu_seqlens (B+1,), out (B, D, state_len).
ConvParams varlen_states_params(const at::Tensor& x, const at::Tensor& cu_seqlens,
                                int64_t state_len, const at::Tensor& out);

// Packed prefill: x (D, T), out (D, T), conv_states (N, D, S).
ConvParams fwd_packed_params(const at::Tensor& x, const at::Tensor& weight, OptTensorRef bias,
                             const at::Tensor& cu_seqlens, const at::Tensor& conv_states,
                             OptTensorRef cache_indices, OptTensorRef has_initial_state,
                             int64_t pad_slot_id, const at::Tensor& out, bool silu);

}  // namespace causal_conv1d
