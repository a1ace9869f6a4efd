#include "ops.h"

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <utility>

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/SmallVector.h>

#include "backend.h"
#include "checks.h"
#include "output_memory.h"

namespace causal_conv1d {
namespace {

// A new dense tensor with t's sizes, dtype and stride order, so that a
// channel-last x gives a channel-last out. Allocated with those strides, not
// as a permuted view of a contiguous tensor: the permute is a dispatcher call
// with autograd view bookkeeping on every call, and an output that is a view
// could not be modified in place once autograd has recorded it.
Tensor empty_with_layout_of(const Tensor& t) {
  const auto sizes = t.sizes(), strides = t.strides();
  const int64_t n = t.dim();
  c10::SmallVector<int64_t, 4> order(n);  // dims, outermost first
  std::iota(order.begin(), order.end(), 0);
  // Stable insertion sort by decreasing stride, step for step the rule of
  // the fake kernels (_registrations.py): size-1 dims have meaningless
  // strides, so no dim moves past one. Unlike std::stable_sort, it allocates
  // no buffer, which decode would pay for on every call.
  for (int64_t i = 1; i < n; ++i) {
    for (int64_t j = i; j > 0; --j) {
      const int64_t a = order[j - 1], b = order[j];
      if (sizes[a] == 1 || sizes[b] == 1 || !(strides[b] > strides[a])) break;
      std::swap(order[j - 1], order[j]);
    }
  }
  // The strides of a contiguous tensor of the dims in that order.
  c10::SmallVector<int64_t, 4> dense(n);
  int64_t stride = 1;
  for (int64_t i = n - 1; i >= 0; --i) {
    dense[order[i]] = stride;
    stride *= std::max<int64_t>(sizes[order[i]], 1);
  }
  return empty_output(sizes, dense, t.options());
}

// 0-element placeholder for an optional output that was not asked for.
Tensor none_like(const Tensor& t) { return empty_output({0}, {1}, t.options()); }

bool deterministic_requested(bool asked) {
  if (asked || at::globalContext().deterministicAlgorithms()) return true;
  const char* env = std::getenv("CAUSAL_CONV1D_DETERMINISTIC");
  return env != nullptr && env[0] == '1';
}

}  // namespace

// Every op: validate the caller's arguments -> allocate outputs from the
// validated sizes -> attach them -> run. Meta tensors stop before the run:
// that is the ops' meta implementation, so shape errors on the meta device
// and under torch.compile come from these same checks (_registrations.py).

void fwd_out(const Tensor& x, const Tensor& weight, const OptTensor& bias,
             const OptTensor& seq_idx, const OptTensor& initial_states, const Tensor& out,
             const OptTensor& final_states_out, bool silu) {
  c10::OptionalDeviceGuard guard(x.device());
  ConvParams p = fwd_params(x, weight, bias, seq_idx, initial_states, silu);
  check_fwd_outputs(p, x, weight, bias, seq_idx, initial_states, out, final_states_out);
  set_fwd_outputs(p, out, final_states_out);
  if (x.is_meta() || p.batch == 0 || p.dim == 0) return;
  run_fwd(p);
}

std::tuple<Tensor, Tensor> fwd(const Tensor& x, const Tensor& weight, const OptTensor& bias,
                               const OptTensor& seq_idx, const OptTensor& initial_states,
                               bool return_final_states, bool silu) {
  c10::OptionalDeviceGuard guard(x.device());
  ConvParams p = fwd_params(x, weight, bias, seq_idx, initial_states, silu);
  Tensor out = empty_with_layout_of(x);
  Tensor final_states = return_final_states
                            ? at::empty({p.batch, p.dim, p.width - 1}, x.options())
                            : none_like(x);
  set_fwd_outputs(p, out, return_final_states ? OptTensor(final_states) : std::nullopt);
  if (!x.is_meta() && p.batch > 0 && p.dim > 0) run_fwd(p);
  return {out, final_states};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bwd(const Tensor& x, const Tensor& weight,
                                               const OptTensor& bias, const OptTensor& seq_idx,
                                               const OptTensor& initial_states,
                                               const Tensor& dout,
                                               const OptTensor& dfinal_states, bool silu,
                                               bool deterministic) {
  c10::OptionalDeviceGuard guard(x.device());
  ConvParams p = bwd_params(x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu,
                            deterministic_requested(deterministic));
  const auto acc = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  Tensor dx = empty_with_layout_of(x);
  Tensor dweight_acc = at::zeros({p.dim, p.width}, acc);
  Tensor dbias_acc = bias ? at::zeros({p.dim}, acc) : none_like(x);
  Tensor dinit = initial_states ? at::empty({p.batch, p.dim, p.width - 1}, x.options())
                                : none_like(x);
  set_bwd_outputs(p, x, dx, initial_states ? OptTensor(dinit) : std::nullopt, dweight_acc,
                  bias ? OptTensor(dbias_acc) : std::nullopt);
  if (x.is_meta()) {
    // checked and allocated: nothing to compute
  } else if (p.batch * p.dim * p.seqlen > 0 || (p.batch * p.dim > 0 && p.dfinal_states.given())) {
    run_bwd(p);
  } else if (dinit.numel() > 0) {
    dinit.zero_();
  }
  Tensor dweight = dweight_acc.to(weight.scalar_type());
  Tensor dbias = bias ? dbias_acc.to(weight.scalar_type()) : none_like(weight);
  return {dx, dweight, dbias, dinit};
}

Tensor update(const Tensor& x, const Tensor& conv_state, const Tensor& weight,
              const OptTensor& bias, const OptTensor& cache_seqlens,
              const OptTensor& conv_state_indices, bool silu) {
  // The CPU has one device: no guard to set, and decode pays for every
  // instruction on this path.
  c10::OptionalDeviceGuard guard;
  if (!x.is_cpu()) guard.reset_device(x.device());
  ConvParams p =
      update_params(x, conv_state, weight, bias, cache_seqlens, conv_state_indices, silu);
  Tensor out = empty_with_layout_of(x);
  set_update_output(p, x, out);
  if (!x.is_meta() && p.batch * p.dim * p.seqlen > 0) run_update(p);
  return out;
}

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
                      int64_t pad_slot_id, bool silu) {
  c10::OptionalDeviceGuard guard(x.device());
  ConvParams p = update_serving_params(
      x, conv_state, weight, bias, conv_state_indices, num_accepted_tokens, query_start_loc,
      retrieve_parent_token, intermediate_conv_window, intermediate_state_indices,
      initial_state_idx, block_idx_last_scheduled_token, has_initial_state,
      block_idx_first_scheduled_token, num_computed_tokens, block_size, pad_slot_id, silu);
  const bool packed = query_start_loc.has_value();
  Tensor out = empty_with_layout_of(x);
  set_update_serving_output(p, x, out, packed);
  if (x.is_meta()) return out;
  // Packed tokens outside every sequence output 0; the kernels write the
  // sequences' tokens (0 for padding sequences).
  if (packed && out.numel() > 0) out.zero_();
  if (p.batch > 0 && p.dim > 0) run_update_serving(p);
  return out;
}

Tensor varlen_states(const Tensor& x, const Tensor& cu_seqlens, int64_t state_len) {
  c10::OptionalDeviceGuard guard(x.device());
  ConvParams p = varlen_states_params(x, cu_seqlens, state_len);
  Tensor out = at::empty({p.batch, p.dim, p.state_len}, x.options());
  set_varlen_states_output(p, x, out);
  if (!x.is_meta() && out.numel() > 0) run_varlen_states(p);
  return out;
}

Tensor fwd_packed(const Tensor& x, const Tensor& weight, const OptTensor& bias,
                  const Tensor& cu_seqlens, const Tensor& conv_states,
                  const OptTensor& cache_indices, const OptTensor& has_initial_state,
                  int64_t pad_slot_id, bool silu) {
  c10::OptionalDeviceGuard guard(x.device());
  ConvParams p = fwd_packed_params(x, weight, bias, cu_seqlens, conv_states, cache_indices,
                                   has_initial_state, pad_slot_id, silu);
  Tensor out = empty_with_layout_of(x);
  set_fwd_packed_output(p, x, out);
  if (x.is_meta()) return out;
  if (p.batch > 0 && p.dim > 0) {
    run_fwd_packed(p);
  } else {
    out.zero_();  // no sequences: every token is outside one, and outputs 0
  }
  return out;
}

}  // namespace causal_conv1d
