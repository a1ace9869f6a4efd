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

// Each op's host path: <op>_params validates every argument the caller
// passes (inputs, and tensors written in place) and returns the params with
// the sizes the outputs follow from; the op then allocates its outputs and
// attaches them with set_<op>_output(s), whose checks are internal
// invariants. Meta tensors are validated alike but carry no data pointers.

// Forward: x (B, D, L), weight (D, W), bias (D,), seq_idx (B, L),
// initial_states (B, D, W-1).
ConvParams fwd_params(const at::Tensor& x, const at::Tensor& weight, OptTensorRef bias,
                      OptTensorRef seq_idx, OptTensorRef initial_states, bool silu);
// Caller-provided forward outputs (fwd_out): out (B, D, L) and final_states
// (B, D, W-1) of x's dtype, writable, sharing no memory with an input.
void check_fwd_outputs(const ConvParams& p, const at::Tensor& x, const at::Tensor& weight,
                       OptTensorRef bias, OptTensorRef seq_idx, OptTensorRef initial_states,
                       const at::Tensor& out, OptTensorRef final_states);
void set_fwd_outputs(ConvParams& p, const at::Tensor& out, OptTensorRef final_states);

// Backward: the forward's inputs plus dout (and dfinal_states); outputs are
// dx, dinitial_states (when initial_states is given) and the fp32/fp64
// accumulators dweight_acc (D, W) and dbias_acc (D,) (when bias is given).
ConvParams bwd_params(const at::Tensor& x, const at::Tensor& weight, OptTensorRef bias,
                      OptTensorRef seq_idx, OptTensorRef initial_states, const at::Tensor& dout,
                      OptTensorRef dfinal_states, bool silu, bool deterministic);
void set_bwd_outputs(ConvParams& p, const at::Tensor& x, const at::Tensor& dx,
                     OptTensorRef dinitial_states, const at::Tensor& dweight_acc,
                     OptTensorRef dbias_acc);

// Decode: x is (B, D, L), or (B, D) for one token per row; out like x.
ConvParams update_params(const at::Tensor& x, const at::Tensor& conv_state,
                         const at::Tensor& weight, OptTensorRef bias, OptTensorRef cache_seqlens,
                         OptTensorRef conv_state_indices, bool silu);
void set_update_output(ConvParams& p, const at::Tensor& x, const at::Tensor& out);

// The serving engines' decode step: x as update's, or packed (D, T) with
// query_start_loc; out like x. See ops.h update_serving.
ConvParams update_serving_params(const at::Tensor& x, const at::Tensor& conv_state,
                                 const at::Tensor& weight, OptTensorRef bias,
                                 OptTensorRef conv_state_indices, OptTensorRef num_accepted_tokens,
                                 OptTensorRef query_start_loc, OptTensorRef retrieve_parent_token,
                                 OptTensorRef intermediate_conv_window,
                                 OptTensorRef intermediate_state_indices,
                                 OptTensorRef initial_state_idx,
                                 OptTensorRef block_idx_last_scheduled_token,
                                 OptTensorRef has_initial_state,
                                 OptTensorRef block_idx_first_scheduled_token,
                                 OptTensorRef num_computed_tokens, int64_t block_size,
                                 int64_t pad_slot_id, bool silu);
void set_update_serving_output(ConvParams& p, const at::Tensor& x, const at::Tensor& out,
                               bool packed);

// x (T, D), cu_seqlens (B+1,), out (B, D, state_len).
ConvParams varlen_states_params(const at::Tensor& x, const at::Tensor& cu_seqlens,
                                int64_t state_len);
void set_varlen_states_output(ConvParams& p, const at::Tensor& x, const at::Tensor& out);

// Packed prefill: x (D, T), out (D, T), conv_states (N, D, S).
ConvParams fwd_packed_params(const at::Tensor& x, const at::Tensor& weight, OptTensorRef bias,
                             const at::Tensor& cu_seqlens, const at::Tensor& conv_states,
                             OptTensorRef cache_indices, OptTensorRef has_initial_state,
                             int64_t pad_slot_id, bool silu);
void set_fwd_packed_output(ConvParams& p, const at::Tensor& x, const at::Tensor& out);

}  // namespace causal_conv1d
