// What each backend (cpu/, cuda/) implements. Exactly one backend is linked
// into a variant, so these names resolve to that backend's kernels. Every
// function receives a ConvParams already validated by checks.cpp: sizes,
// dtypes, devices and (on the host) index values are known to be in range.
#pragma once

#include "params.h"

namespace causal_conv1d {

// out = act(bias + conv(x)); writes final_states when given.
// Reads: x, weight, bias?, seq_idx?, initial_states?. Writes: out, final_states?.
void run_fwd(const ConvParams& p);

// Gradients of run_fwd. Reads: x, weight, bias?, seq_idx?, initial_states?,
// dout, dfinal_states?. Writes: dx, dinitial_states? and accumulates into
// the zero-filled dweight_acc / dbias_acc. With p.deterministic the result
// is bitwise reproducible run to run.
void run_bwd(const ConvParams& p);

// Decode: x (B, D, L) new tokens (seqlen = L); conv_state pool (N, D, S).
// Row b uses pool row state_indices[b] (or b); a padding row gets out = 0
// and its state is untouched. Without cache_seqlens the state shifts left
// by L; with it, the state is a circular buffer written at
// (cache_seqlens[b] + i) % S. Writes out (B, D, L) and conv_state.
void run_update(const ConvParams& p);

// The serving engines' decode step: x (B, D, L) (seqlen = L) or packed
// (1, D, T) with query_start_loc; per sequence, what serving.h's
// plan_sequence says: out for its tokens (0 for a padding sequence), then
// its written pool row, or its intermediate windows. Packed tokens outside
// every sequence are zeroed by the host beforehand.
void run_update_serving(const ConvParams& p);

// Packed sequences: x is (1, D, T) (seqlen = T), cu_seqlens (B+1,).
// Writes out (B, D, state_len): the last state_len tokens of each sequence,
// right-aligned, zero where the sequence is shorter.
void run_varlen_states(const ConvParams& p);

// Packed prefill with a state pool: x (1, D, T), cu_seqlens (B+1,),
// conv_state pool (N, D, S >= W-1), state_indices (B,) (or identity),
// has_initial_state (B,) (or all false). Sequence b reads its initial state
// from the last W-1 columns of its pool row when has_initial_state[b], then
// writes the last S inputs (state concatenated with its tokens) back.
// A sequence whose index is pad_slot_id (or < 0) is skipped: out = 0, pool
// untouched. Writes out (1, D, T).
void run_fwd_packed(const ConvParams& p);

// Which build of this backend's kernels runs: the CPU tier ("default",
// "avx2", "avx512", "avx512_bf16"; see cpu/dispatch.cpp) or "cuda".
const char* kernel_tier();

}  // namespace causal_conv1d
