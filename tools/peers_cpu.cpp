// The CPU kernels a vLLM or SGLang user runs instead of ours, registered as
// torch ops cpu_peers::* for the benchmarks (tools/peers.sh cpu compiles this
// file with vLLM's csrc/cpu sources from its PyPI sdist; none of their code
// is in this repository). The declarations match vLLM 0.34's definitions:
//   vllm_update  csrc/cpu/mamba_cpu.cpp, what vLLM's CPU backend calls for
//                causal_conv1d_update (Mamba, Mamba2 and hybrid models)
//   sgl_*        csrc/cpu/sgl-kernels/conv.cpp, SGLang's CPU kernels that
//                vLLM's CPU backend calls for its gated delta-net layers
//                (Qwen3-Next): weight packing, packed prefill with a state
//                pool, decode and speculative decode
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>

at::Tensor causal_conv1d_update_cpu_impl(
    at::Tensor& x, at::Tensor& conv_state, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<std::string>& activation,
    const c10::optional<at::Tensor>& conv_state_indices,
    const c10::optional<at::Tensor>& query_start_loc, int64_t pad_slot_id);

at::Tensor causal_conv1d_weight_pack(const at::Tensor& weight);

at::Tensor causal_conv1d_fwd_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& conv_states, const std::optional<at::Tensor>& query_start_loc,
    const std::optional<at::Tensor>& cache_indices,
    const std::optional<at::Tensor>& has_initial_state, bool silu_activation, int64_t pad_slot_id,
    bool is_weight_packed);

at::Tensor causal_conv1d_update_cpu(
    const at::Tensor& x, const at::Tensor& conv_states, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, bool silu_activation,
    const std::optional<at::Tensor>& num_accepted_tokens,
    const std::optional<at::Tensor>& conv_state_indices, int64_t pad_slot_id,
    bool is_weight_packed);

TORCH_LIBRARY(cpu_peers, m) {
  m.def("vllm_update(Tensor(a0!) x, Tensor(a1!) conv_state, Tensor weight, Tensor? bias, "
        "str? activation, Tensor? conv_state_indices, Tensor? query_start_loc, "
        "int pad_slot_id) -> Tensor",
        &causal_conv1d_update_cpu_impl);
  m.def("sgl_weight_pack(Tensor weight) -> Tensor", &causal_conv1d_weight_pack);
  m.def("sgl_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor(a!)? conv_states, "
        "Tensor? query_start_loc, Tensor? cache_indices, Tensor? has_initial_state, "
        "bool silu_activation, int pad_slot_id, bool is_weight_packed) -> Tensor",
        &causal_conv1d_fwd_cpu);
  m.def("sgl_update(Tensor x, Tensor(a!) conv_states, Tensor weight, Tensor? bias, "
        "bool silu_activation, Tensor? num_accepted_tokens, Tensor? conv_state_indices, "
        "int pad_slot_id, bool is_weight_packed) -> Tensor",
        &causal_conv1d_update_cpu);
}
