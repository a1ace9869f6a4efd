#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <string>
#include <utility>

#include "registration.h"
#include "torch_binding.h"
#include "../causal_conv1d/backend.h"

namespace {

// The public function each in-place op serves, for messages.
const char* public_name(const c10::OperatorHandle& op) {
  const std::string& name = op.schema().name();
  if (name.size() >= 7 && name.compare(name.size() - 7, 7, "fwd_out") == 0) {
    return "causal_conv1d_fn";
  }
  if (name.find("update") != std::string::npos) {
    return "causal_conv1d_update";
  }
  return "causal_conv1d_packed_fwd";
}

// ADInplaceOrView kernel of the ops that write tensors in place and have no
// gradient (fwd_out, update, fwd_packed); their Autograd key falls through
// to it. One boxed kernel on the path instead of one per key: decode calls
// these ops once per layer and token, and each kernel on the dispatcher path
// is host time the step pays. This key is in the thread's default key set,
// so it runs for every call made outside inference mode, including calls
// whose tensors are all inference tensors (which carry no Autograd key).
//
// Before anything is written it refuses what torch's own in-place ops
// refuse: in grad mode, writing a leaf that requires grad or a view with
// autograd history (whose base cannot be detached); outside inference mode,
// writing an inference tensor. After the write it bumps the version counter
// of every argument the schema marks `(a!)`, as torch's in-place ops do, so
// that autograd refuses a backward that saved such a tensor before it was
// overwritten instead of computing a wrong gradient from the new values; and
// a written tensor with autograd history loses it: its new contents do not
// depend on that history, so a later backward must not flow into it.
void guard_in_place_writes(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                           torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  // The written tensors and their argument indices (at most two per op).
  c10::SmallVector<std::pair<at::Tensor, size_t>, 2> written;
  for (size_t i = 0; i < args.size(); ++i) {
    const auto* alias = args[i].alias_info();
    const c10::IValue& value = (*stack)[first + i];
    if (alias != nullptr && alias->isWrite() && value.isTensor()) {
      written.emplace_back(value.toTensor(), i);
    }
  }
  bool detach = false;
  if (at::GradMode::is_enabled()) {
    for (const auto& [t, i] : written) {
      if (!t.requires_grad()) continue;
      const std::string& name = args[i].name();
      TORCH_CHECK_VALUE(!t.is_leaf(), public_name(op), ": ", name,
                        " is a leaf tensor that requires grad; it is written in place and has "
                        "no gradient: pass ", name, ".detach() or call under torch.no_grad()");
      TORCH_CHECK_VALUE(!t.is_view(), public_name(op), ": ", name,
                        " is a view with autograd history; it is written in place and has no "
                        "gradient: pass ", name, ".detach() or call under torch.no_grad()");
      detach = true;
    }
  }
  if (!c10::InferenceMode::is_enabled()) {
    for (const auto& [t, i] : written) {
      TORCH_CHECK_VALUE(!t.is_inference(), public_name(op), ": ", args[i].name(),
                        " is an inference tensor, which cannot be written outside "
                        "torch.inference_mode(); pass a clone");
    }
  }
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  for (auto& [t, i] : written) {
    if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
    if (detach && t.requires_grad()) t.detach_();
  }
}

}  // namespace

// Schemas. Functional ops allocate what they return; `(a!)` marks tensors an
// op writes in place. Fake (meta) kernels and autograd are registered in
// Python (torch-ext/causal_conv1d/_registrations.py).
TORCH_LIBRARY_EXPAND(TORCH_EXTENSION_NAME, ops) {
  ops.def(
      "fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
      "bool return_final_states, bool silu) -> (Tensor out, Tensor final_states)");
  ops.def(
      "fwd_out(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
      "Tensor(a!) out, Tensor(b!)? final_states_out, bool silu) -> ()");
  ops.def(
      "bwd(Tensor x, Tensor weight, Tensor? bias, Tensor? seq_idx, Tensor? initial_states, "
      "Tensor dout, Tensor? dfinal_states, bool silu, bool deterministic) -> "
      "(Tensor dx, Tensor dweight, Tensor dbias, Tensor dinitial_states)");
  ops.def(
      "update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, "
      "Tensor? cache_seqlens, Tensor? conv_state_indices, bool silu) -> Tensor");
  ops.def(
      "update_serving(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias, "
      "Tensor? conv_state_indices, Tensor? num_accepted_tokens, Tensor? query_start_loc, "
      "Tensor? retrieve_parent_token, Tensor(b!)? intermediate_conv_window, "
      "Tensor? intermediate_state_indices, Tensor? initial_state_idx, "
      "Tensor? block_idx_last_scheduled_token, Tensor? has_initial_state, "
      "Tensor? block_idx_first_scheduled_token, Tensor? num_computed_tokens, int block_size, "
      "int pad_slot_id, bool silu) -> Tensor");
  ops.def("varlen_states(Tensor x, Tensor cu_seqlens, int state_len) -> Tensor");
  ops.def(
      "fwd_packed(Tensor x, Tensor weight, Tensor? bias, Tensor cu_seqlens, "
      "Tensor(a!) conv_states, Tensor? cache_indices, Tensor? has_initial_state, "
      "int pad_slot_id, bool silu) -> Tensor");
  // No tensors, so no dispatch key: one kernel for every backend.
  ops.def("kernel_tier() -> str", [] { return std::string(causal_conv1d::kernel_tier()); });

#if defined(CPU_KERNEL)
  const auto key = c10::DeviceType::CPU;
#elif defined(CUDA_KERNEL)
  const auto key = c10::DeviceType::CUDA;
#else
#error "build with CPU_KERNEL or CUDA_KERNEL defined"
#endif
  ops.impl("fwd", key, &causal_conv1d::fwd);
  ops.impl("fwd_out", key, &causal_conv1d::fwd_out);
  ops.impl("bwd", key, &causal_conv1d::bwd);
  ops.impl("update", key, &causal_conv1d::update);
  ops.impl("update_serving", key, &causal_conv1d::update_serving);
  ops.impl("varlen_states", key, &causal_conv1d::varlen_states);
  ops.impl("fwd_packed", key, &causal_conv1d::fwd_packed);

  // Decode and state ops have no gradient (as upstream's): their outputs do
  // not require grad, instead of carrying a graph node that backpropagates
  // nothing (torch's not-implemented fallback, which only warns). The ops
  // that write tensors refuse and record those writes in one kernel.
  for (const char* op : {"varlen_states", "fwd_out", "update", "update_serving", "fwd_packed"}) {
    ops.impl(op, c10::DispatchKey::Autograd, torch::CppFunction::makeFallthrough());
  }
  for (const char* op : {"fwd_out", "update", "update_serving", "fwd_packed"}) {
    ops.impl(op, c10::DispatchKey::ADInplaceOrView,
             torch::CppFunction::makeFromBoxedFunction<&guard_in_place_writes>());
  }
}

REGISTER_EXTENSION(TORCH_EXTENSION_NAME)
