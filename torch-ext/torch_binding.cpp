#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <string>
#include <vector>

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

// ADInplaceOrView kernel of the ops that write tensors in place: runs the op,
// then bumps the version counter of every argument the schema marks `(a!)`,
// as torch's own in-place ops do, so that autograd refuses a backward that
// saved such a tensor before it was overwritten instead of computing a wrong
// gradient from the new values. Inference tensors have no counter; this key
// runs for them too outside inference mode (it is in the thread's default
// key set), where writing them is refused before the op runs.
void bump_written_versions(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                           torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  std::vector<at::Tensor> written;
  for (size_t i = 0; i < args.size(); ++i) {
    const auto* alias = args[i].alias_info();
    const c10::IValue& value = (*stack)[first + i];
    if (alias != nullptr && alias->isWrite() && value.isTensor()) {
      written.push_back(value.toTensor());
      // Refused here, before the write, rather than by the Autograd kernel:
      // a call whose tensors are all inference tensors has no Autograd key,
      // while this key is in every call made outside inference mode.
      TORCH_CHECK_VALUE(!written.back().is_inference() || c10::InferenceMode::is_enabled(),
                        public_name(op), ": ", args[i].name(),
                        " is an inference tensor, which cannot be written outside "
                        "torch.inference_mode(); pass a clone");
    }
  }
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  for (const at::Tensor& t : written) {
    if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
  }
}

// Autograd kernel of the ops that write tensors in place and have no
// gradient (fwd_out, update, fwd_packed). Refuses, before anything is
// written, what torch's own in-place ops refuse in grad mode: writing a leaf
// that requires grad (or a view with history, whose base cannot be
// detached); inference tensors are refused by bump_written_versions. A
// written tensor with autograd history loses it: its new contents do not
// depend on that history, so a later backward must not flow into it.
void refuse_grad_writes(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                        torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  std::vector<at::Tensor> detach;
  for (size_t i = 0; i < args.size(); ++i) {
    const auto* alias = args[i].alias_info();
    const c10::IValue& value = (*stack)[first + i];
    if (alias == nullptr || !alias->isWrite() || !value.isTensor()) continue;
    const at::Tensor& t = value.toTensor();
    const std::string& name = args[i].name();
    if (!t.requires_grad() || !at::GradMode::is_enabled()) continue;
    TORCH_CHECK_VALUE(!t.is_leaf(), public_name(op), ": ", name,
                      " is a leaf tensor that requires grad; it is written in place and has no "
                      "gradient: pass ", name, ".detach() or call under torch.no_grad()");
    TORCH_CHECK_VALUE(!t.is_view(), public_name(op), ": ", name,
                      " is a view with autograd history; it is written in place and has no "
                      "gradient: pass ", name, ".detach() or call under torch.no_grad()");
    detach.push_back(t);
  }
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
  for (at::Tensor& t : detach) t.detach_();
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
  // nothing (torch's not-implemented fallback, which only warns).
  ops.impl("varlen_states", c10::DispatchKey::Autograd, torch::CppFunction::makeFallthrough());
  for (const char* op : {"fwd_out", "update", "update_serving", "fwd_packed"}) {
    ops.impl(op, c10::DispatchKey::Autograd,
             torch::CppFunction::makeFromBoxedFunction<&refuse_grad_writes>());
  }
  for (const char* op : {"fwd_out", "update", "update_serving", "fwd_packed"}) {
    ops.impl(op, c10::DispatchKey::ADInplaceOrView,
             torch::CppFunction::makeFromBoxedFunction<&bump_written_versions>());
  }
}

REGISTER_EXTENSION(TORCH_EXTENSION_NAME)
