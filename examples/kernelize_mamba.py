"""kernelize a tiny Mamba-style model with this kernel's layers, from a lock file.

    kernels lock examples          # writes examples/kernels.lock (pyproject.toml here)
    kernels download examples      # optional: fill the cache for offline use
    python examples/kernelize_mamba.py [--lockfile examples/kernels.lock]

The model has random weights. Each block projects the input to (x, z), runs
x through a causal depthwise conv with silu (the module kernelize swaps for
the `CausalConv1d` layer), gates with silu(z) and projects back; decoding a
token runs the conv's decode step (the `CausalConv1dUpdate` layer) against a
per-block conv-state cache. (A real Mamba block also has a selective scan
after the conv; it is left out because this kernel does not provide it.)

The script checks that the kernelized model gives the un-kernelized model's
outputs, for a prefill and a few decode steps, and leaves the same cache.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kernels import LockedLayerRepository, Mode, kernelize, use_kernel_forward_from_hub, use_kernel_mapping

REPO_ID = "kernels-community/causal-conv1d"
HERE = Path(__file__).resolve().parent


def _act(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation in ("silu", "swish") else y


@use_kernel_forward_from_hub("CausalConv1d")
class ShortConv(nn.Conv1d):
    """Depthwise causal conv over (batch, dim, seqlen), then the activation.

    The plain-PyTorch forward below is what runs un-kernelized; the
    CausalConv1d layer replaces it with the same signature and result.
    """

    def __init__(self, dim: int, width: int, activation: str | None = "silu"):
        super().__init__(dim, dim, width, groups=dim, padding=width - 1)
        self.activation = activation

    def forward(self, x, seq_idx=None, initial_states=None, return_final_states=False):
        if seq_idx is not None:
            raise NotImplementedError("packed sequences (seq_idx) need the kernel")
        width, seqlen = self.weight.shape[-1], x.shape[-1]
        if initial_states is None:
            initial_states = x.new_zeros(x.shape[0], x.shape[1], width - 1)
        xin = torch.cat([initial_states, x], dim=-1)
        y = _act(F.conv1d(xin, self.weight, self.bias, groups=self.groups), self.activation)
        assert y.shape[-1] == seqlen
        if return_final_states:
            return y, xin[..., xin.shape[-1] - (width - 1):]
        return y


@use_kernel_forward_from_hub("CausalConv1dUpdate")
class ShortConvStep(nn.Module):
    """The decode step of a ShortConv; reads that conv's parameters."""

    def __init__(self, conv: ShortConv):
        super().__init__()
        # A plain reference, not a submodule: the parameters stay registered once.
        self.__dict__["conv"] = conv

    weight = property(lambda self: self.conv.weight)
    bias = property(lambda self: self.conv.bias)
    activation = property(lambda self: self.conv.activation)

    def forward(self, x, conv_state, cache_seqlens=None, conv_state_indices=None):
        if cache_seqlens is not None or conv_state_indices is not None:
            raise NotImplementedError("circular or pooled states need the kernel")
        x3 = x.unsqueeze(-1) if x.dim() == 2 else x
        width, state_len = self.weight.shape[-1], conv_state.shape[-1]
        stream = torch.cat([conv_state, x3], dim=-1)
        window = stream[..., stream.shape[-1] - x3.shape[-1] - (width - 1):]
        y = _act(F.conv1d(window, self.weight, self.bias, groups=self.weight.shape[0]), self.activation)
        conv_state.copy_(stream[..., stream.shape[-1] - state_len:])
        return y.squeeze(-1) if x.dim() == 2 else y


class Block(nn.Module):
    def __init__(self, d_model: int, d_inner: int, width: int):
        super().__init__()
        self.in_proj = nn.Linear(d_model, 2 * d_inner)
        self.conv = ShortConv(d_inner, width)
        self.conv_step = ShortConvStep(self.conv)
        self.out_proj = nn.Linear(d_inner, d_model)

    def forward(self, h: torch.Tensor, conv_state: torch.Tensor) -> torch.Tensor:
        """Prefill: h (batch, seqlen, d_model); fills conv_state (batch, d_inner, S)."""
        x, z = self.in_proj(h).chunk(2, dim=-1)
        # channel-last view of the projection: the kernel reads it in place
        y, final = self.conv(x.transpose(1, 2), return_final_states=True)
        state_len = conv_state.shape[-1]
        conv_state.zero_()
        conv_state[..., state_len - final.shape[-1]:] = final
        return h + self.out_proj(y.transpose(1, 2) * F.silu(z))

    def step(self, h: torch.Tensor, conv_state: torch.Tensor) -> torch.Tensor:
        """Decode one token: h (batch, d_model); conv_state updated in place."""
        x, z = self.in_proj(h).chunk(2, dim=-1)
        y = self.conv_step(x, conv_state)
        return h + self.out_proj(y * F.silu(z))


class TinyMamba(nn.Module):
    def __init__(self, d_model=32, d_inner=64, width=4, n_layers=2, state_len=4):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, d_inner, width) for _ in range(n_layers))
        self.d_inner, self.state_len = d_inner, state_len

    def new_cache(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, self.d_inner, self.state_len) for _ in self.blocks]

    def forward(self, h, cache):
        for block, state in zip(self.blocks, cache):
            h = block(h, state)
        return h

    def step(self, h, cache):
        for block, state in zip(self.blocks, cache):
            h = block.step(h, state)
        return h


@torch.no_grad()
def run(model: TinyMamba, prompt: torch.Tensor, tokens: torch.Tensor):
    cache = model.new_cache(prompt.shape[0])
    outs = [model(prompt, cache)]
    for t in range(tokens.shape[1]):
        outs.append(model.step(tokens[:, t], cache))
    return outs, cache


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lockfile", type=Path, default=HERE / "kernels.lock")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = TinyMamba().eval()
    prompt, tokens = torch.randn(2, 16, 32), torch.randn(2, 5, 32)
    expected, expected_cache = run(model, prompt, tokens)

    mapping = {
        name: {"cpu": LockedLayerRepository(REPO_ID, lockfile=args.lockfile, layer_name=name),
               "cuda": LockedLayerRepository(REPO_ID, lockfile=args.lockfile, layer_name=name)}
        for name in ("CausalConv1d", "CausalConv1dUpdate")
    }
    fast = copy.deepcopy(model)
    with use_kernel_mapping(mapping):
        # use_fallback=False: fail loudly instead of quietly keeping PyTorch.
        kernelize(fast, mode=Mode.INFERENCE, device="cpu", use_fallback=False)
    for block in fast.blocks:
        for module in (block.conv, block.conv_step):
            swapped = module.forward.__func__ is not type(module).forward
            assert swapped, f"{type(module).__name__} was not kernelized"
    print("kernelized: forwards from", fast.blocks[0].conv.forward.__func__.__module__)

    got, got_cache = run(fast, prompt, tokens)
    for i, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, rtol=3e-4, atol=1e-4, msg=lambda m: f"output {i}: {m}")
    for a, b in zip(got_cache, expected_cache):  # inputs of later blocks carry rounding
        torch.testing.assert_close(a, b, rtol=3e-4, atol=1e-4)
    print(f"ok: kernelized TinyMamba matches PyTorch (prefill of {prompt.shape[1]} tokens, "
          f"{tokens.shape[1]} decode steps)")


if __name__ == "__main__":
    main()
