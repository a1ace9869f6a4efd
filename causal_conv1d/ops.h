// The operators registered with torch.library (see torch-ext/torch_binding.cpp).
// Each validates its arguments (checks.cpp), allocates what it returns, and
// runs the kernels of the backend linked into this variant (backend.h).
#pragma once

#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace causal_conv1d {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// -> (out, final_states). out has x's dtype and stride order; final_states
// is (B, D, W-1) when return_final_states, else an empty tensor.
std::tuple<Tensor, Tensor> fwd(const Tensor& x, const Tensor& weight, const OptTensor& bias,
                               const OptTensor& seq_idx, const OptTensor& initial_states,
                               bool return_final_states, bool silu);

// Same computation into caller-provided out (and final_states_out if given).
void fwd_out(const Tensor& x, const Tensor& weight, const OptTensor& bias,
             const OptTensor& seq_idx, const OptTensor& initial_states, const Tensor& out,
             const OptTensor& final_states_out, bool silu);

// -> (dx, dweight, dbias, dinitial_states). dweight/dbias in weight's dtype
// (accumulated in fp32); dbias empty when bias is None; dinitial_states empty
// when initial_states is None.
std::tuple<Tensor, Tensor, Tensor, Tensor> bwd(const Tensor& x, const Tensor& weight,
                                               const OptTensor& bias, const OptTensor& seq_idx,
                                               const OptTensor& initial_states,
                                               const Tensor& dout,
                                               const OptTensor& dfinal_states, bool silu,
                                               bool deterministic);

// Decode step. x (B, D) or (B, D, L); conv_state (B or N, D, S) updated in
// place. -> out shaped like x.
Tensor update(const Tensor& x, const Tensor& conv_state, const Tensor& weight,
              const OptTensor& bias, const OptTensor& cache_seqlens,
              const OptTensor& conv_state_indices, bool silu);

// The serving engines' decode step (see serving.h and reference.py's
// _serving_update_ref): x (B, D) / (B, D, L), or packed (D, T) (any strides;
// pass a (T, D) tensor transposed) with query_start_loc (B+1,); speculative
// decoding (num_accepted_tokens (B,)), token trees (retrieve_parent_token
// (B, >= L)), intermediate windows (N2, >= L, D, W-1) with their row per
// sequence, and prefix-cached pools read and written through a (B, blocks)
// conv_state_indices table at initial_state_idx / block_idx_last_scheduled_token;
// packed prefill into such a pool (has_initial_state, and with block_size > 0
// the state after every completed block of block_size tokens written to the
// table from column block_idx_first_scheduled_token, num_computed_tokens
// counting each sequence's earlier tokens).
// -> out with x's shape and stride order.
Tensor update_serving(const Tensor& x, const Tensor& conv_state, const Tensor& weight,
                      const OptTensor& bias, const OptTensor& conv_state_indices,
                      const OptTensor& num_accepted_tokens, const OptTensor& query_start_loc,
                      const OptTensor& retrieve_parent_token,
                      const OptTensor& intermediate_conv_window,
                      const OptTensor& intermediate_state_indices,
                      const OptTensor& initial_state_idx,
                      const OptTensor& block_idx_last_scheduled_token,
                      const OptTensor& has_initial_state,
                      const OptTensor& block_idx_first_scheduled_token,
                      const OptTensor& num_computed_tokens, int64_t block_size,
                      int64_t pad_slot_id, bool silu);

// x (T, D), cu_seqlens (B+1,) int32 -> (B, D, state_len).
Tensor varlen_states(const Tensor& x, const Tensor& cu_seqlens, int64_t state_len);

// Packed prefill with paged states. x (D, T) (any strides; pass a (T, D)
// tensor transposed), cu_seqlens (B+1,) int32, conv_states (N, D, S) updated
// in place, cache_indices (B,) int32, has_initial_state (B,) bool.
// -> out (D, T) with x's stride order.
Tensor fwd_packed(const Tensor& x, const Tensor& weight, const OptTensor& bias,
                  const Tensor& cu_seqlens, const Tensor& conv_states,
                  const OptTensor& cache_indices, const OptTensor& has_initial_state,
                  int64_t pad_slot_id, bool silu);

}  // namespace causal_conv1d
