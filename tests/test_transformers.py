"""Real transformers models, kernelized onto this repository's layers.

transformers routes the convolution of its Mamba-family models through
functions decorated with ``use_kernel_func_from_hub_with_fallback(
"causal_conv1d_fn" | "causal_conv1d_update", ...)``; ``kernels.kernelize``
with a mapping for those two names swaps in ``layers.causal_conv1d_fn`` /
``layers.causal_conv1d_update`` from the built variant. Tiny random models
(no download) of Mamba, Mamba2 and the hybrids Bamba and Falcon-H1 (Mamba2
+ attention), Qwen3-Next (gated DeltaNet + attention, MoE) and LFM2 (short
convolutions + attention) must then give transformers' own fallback's
logits, the same greedy tokens and the same training gradients, with our
operators provably running.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
kernels = pytest.importorskip("kernels", reason="kernels is not installed")

from transformers.utils.import_utils import is_kernels_available  # noqa: E402

if not is_kernels_available():
    pytest.skip(
        "transformers switched its hub-kernel integration off: the installed kernels "
        f"{kernels.__version__} is outside its supported range", allow_module_level=True,
    )

from kernels import LocalLayerRepository, Mode, kernelize, use_kernel_mapping  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KERNEL_ROOT = Path(os.environ.get("CAUSAL_CONV1D_KERNEL_ROOT", ROOT))
LAYERS = ("causal_conv1d_fn", "causal_conv1d_update")
VOCAB = 128


def tiny_model(family: str):
    t = transformers
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2)
    if family == "mamba":
        cfg = t.MambaConfig(state_size=8, expand=2, conv_kernel=4, **common)
        return t.MambaForCausalLM(cfg)
    if family == "mamba2":
        cfg = t.Mamba2Config(state_size=16, expand=2, head_dim=16, num_heads=8, n_groups=1,
                             conv_kernel=4, chunk_size=16, **common)
        return t.Mamba2ForCausalLM(cfg)
    if family == "bamba":
        cfg = t.BambaConfig(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                            mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16,
                            mamba_d_conv=4, mamba_expand=2, attn_layer_indices=[1],
                            mamba_chunk_size=16, **common)
        return t.BambaForCausalLM(cfg)
    if family == "falcon_h1":  # Mamba2 mixers beside attention in every layer
        cfg = t.FalconH1Config(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                               head_dim=16, mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8,
                               mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=1,
                               mamba_chunk_size=16, **common)
        return t.FalconH1ForCausalLM(cfg)
    if family == "qwen3_next":  # gated DeltaNet layers (their conv is ours) and attention, MoE
        cfg = t.Qwen3NextConfig(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                head_dim=16, linear_conv_kernel_dim=4, linear_key_head_dim=16,
                                linear_value_head_dim=16, linear_num_key_heads=2,
                                linear_num_value_heads=4, moe_intermediate_size=32,
                                shared_expert_intermediate_size=32, num_experts_per_tok=2,
                                num_experts=4, layer_types=["linear_attention", "full_attention"],
                                **common)
        return t.Qwen3NextForCausalLM(cfg)
    if family == "lfm2":  # gated short convolutions (W = conv_L_cache = 3) and attention
        cfg = t.Lfm2Config(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                           conv_L_cache=3, layer_types=["conv", "full_attention"], **common)
        return t.Lfm2ForCausalLM(cfg)
    raise ValueError(family)


def local_mapping(mode: Mode) -> dict:
    """Both layers for inference; in training only causal_conv1d_fn (the
    decode layer has no backward, and kernels refuses it for training)."""
    names = LAYERS if mode == Mode.INFERENCE else ("causal_conv1d_fn",)
    return {name: {"cpu": {mode: LocalLayerRepository(KERNEL_ROOT, layer_name=name)}} for name in names}


def our_op_calls(fn) -> dict[str, int]:
    """Runs fn under the profiler; counts the calls of this repository's
    operators (namespace _causal_conv1d_<backend>_<id>) by op name."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for e in prof.events():
        if e.name.startswith("_causal_conv1d_"):
            op = e.name.split("::")[-1]
            counts[op] = counts.get(op, 0) + 1
    return counts


def conv_mixers(model) -> int:
    """How many of the model's modules call causal_conv1d_fn."""
    return sum("causal_conv1d_fn" in (getattr(m, "_kernel_funcs", None) or {}) for m in model.modules())


@contextlib.contextmanager
def kernelized(model, mode: Mode):
    """kernelize maps the model's hub functions onto our layers by
    replacing the forward of transformers' module-level function objects,
    i.e. for every model of that family in the process. Undone on exit so
    that the next test's reference is transformers' own fallback again."""
    funcs = [f for m in model.modules() for f in (getattr(m, "_kernel_funcs", None) or {}).values()]
    try:
        with use_kernel_mapping(local_mapping(mode), inherit_mapping=False):
            # The models hold other kernelizable functions (the scans): they
            # keep their PyTorch fallback; the profiler proves ours ran.
            kernelize(model, mode=mode, device="cpu")
        yield model
    finally:
        for f in funcs:
            f.__dict__.pop("forward", None)


FAMILIES = ["mamba", "mamba2", "bamba", "falcon_h1", "qwen3_next", "lfm2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_inference_matches_fallback(family, seeded):
    model = tiny_model(family).eval()
    ids = torch.randint(0, VOCAB, (2, 23))
    with torch.no_grad():
        assert our_op_calls(lambda: model(ids)) == {}  # the reference is the fallback
        want = model(ids).logits
        want_tokens = model.generate(ids, max_new_tokens=6, do_sample=False)
    with kernelized(model, Mode.INFERENCE), torch.no_grad():
        calls = our_op_calls(lambda: model(ids))
        got = model(ids).logits
        generate_calls = our_op_calls(lambda: model.generate(ids, max_new_tokens=6, do_sample=False))
        got_tokens = model.generate(ids, max_new_tokens=6, do_sample=False)
    n = conv_mixers(model)
    assert calls == {"fwd": n}, f"expected our forward once in each of {n} mixers: {calls}"
    assert generate_calls == {"fwd": n, "update": 5 * n}, (
        f"expected a prefill and 5 decode steps in each of {n} mixers: {generate_calls}")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got_tokens, want_tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_gradients_match_fallback(family, seeded):
    model = tiny_model(family).train()
    ids = torch.randint(0, VOCAB, (2, 17))
    loss_want = model(ids, labels=ids).loss
    loss_want.backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    with kernelized(model, Mode.TRAINING):
        calls = our_op_calls(lambda: model(ids, labels=ids).loss.backward())
        model.zero_grad()
        loss_got = model(ids, labels=ids).loss
        loss_got.backward()
    n = conv_mixers(model)
    assert calls == {"fwd": n, "bwd": n}, f"expected our forward and backward in {n} mixers: {calls}"
    torch.testing.assert_close(loss_got, loss_want, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, want[name], rtol=1e-3, atol=1e-4, msg=name)


def test_layer_signatures_are_transformers_own():
    """kernels' own validation (run by kernelize above) compares argument
    counts and kinds; this also pins the names transformers passes."""
    import inspect

    from transformers.models.mamba2 import modeling_mamba2 as m2

    ours = kernels.get_local_kernel(KERNEL_ROOT).layers
    for name in LAYERS:
        theirs = inspect.signature(getattr(m2, name).forward)
        mine = inspect.signature(getattr(ours, name).forward)
        assert list(mine.parameters)[1:] == list(theirs.parameters), name


def test_kernel_config_refuses_cpu():
    """What CARD.md says: transformers' KernelConfig maps GPU device types
    only, so CPU users kernelize with a mapping instead."""
    from transformers import KernelConfig

    torch.manual_seed(0)
    model = tiny_model("mamba2")
    config = KernelConfig({"causal_conv1d_fn": {"cpu": "kernels-community/causal-conv1d:causal_conv1d_fn"}})
    with pytest.raises(ValueError, match="cpu"):
        config.sanitize_kernel_mapping(model)
    KernelConfig({"causal_conv1d_fn": {"cuda": "kernels-community/causal-conv1d:causal_conv1d_fn"}}
                 ).sanitize_kernel_mapping(model)
