"""Upstream's low-level functions (causal_conv1d.cpp_functions, 1.7).

mamba_ssm's fused Mamba2 paths call these directly, with the activation as a
bool and the output buffers as arguments, so they are kept under the same
names and argument order. They run the same operators as the public
functions (same checks, same kernels) and are not differentiable: callers
build their own autograd around them, as mamba_ssm does.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._ops import ops

__all__ = [
    "causal_conv1d_fwd_function",
    "causal_conv1d_bwd_function",
    "causal_conv1d_update_function",
]


def _flag(value, name: str, fn: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__}")
    return value


def causal_conv1d_fwd_function(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    seq_idx: Optional[torch.Tensor],
    initial_states: Optional[torch.Tensor],
    final_states_out: Optional[torch.Tensor],
    silu_activation: bool,
) -> torch.Tensor:
    """Forward into a new output shaped like x (batch, dim, seqlen).

    final_states_out, when given, is a (batch, dim, width - 1) tensor of x's
    dtype that receives the last width - 1 inputs. Other arguments as for
    causal_conv1d_fn, with the activation as silu_activation (bool).
    """
    silu = _flag(silu_activation, "silu_activation", "causal_conv1d_fwd_function")
    out = torch.empty_like(x)
    ops.fwd_out.default(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu)
    return out


def causal_conv1d_bwd_function(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    dout: torch.Tensor,
    seq_idx: Optional[torch.Tensor],
    initial_states: Optional[torch.Tensor],
    dfinal_states: Optional[torch.Tensor],
    dx: Optional[torch.Tensor],
    return_dinitial_states: bool,
    silu_activation: bool,
):
    """Gradients of the forward for an incoming dout (batch, dim, seqlen).

    Returns (dx, dweight, dbias, dinitial_states): dx like x (written into
    ``dx`` when given), dweight in weight's dtype, dbias in bias's dtype or
    None without bias, dinitial_states (batch, dim, width - 1) when
    return_dinitial_states, else None. dfinal_states is the optional
    incoming gradient of the final states. The deterministic reduction is
    chosen as for autograd (CAUSAL_CONV1D_DETERMINISTIC=1 or
    torch.use_deterministic_algorithms(True)).
    """
    fn = "causal_conv1d_bwd_function"
    silu = _flag(silu_activation, "silu_activation", fn)
    want_dinit = _flag(return_dinitial_states, "return_dinitial_states", fn)
    if want_dinit and initial_states is None:
        raise ValueError(f"{fn}: return_dinitial_states needs initial_states")
    if dx is not None:
        if not isinstance(dx, torch.Tensor):
            raise TypeError(f"{fn}: dx must be a tensor or None, got {type(dx).__name__}")
        if dx.shape != x.shape or dx.dtype != x.dtype or dx.device != x.device:
            raise ValueError(
                f"{fn}: dx must match x (shape {tuple(x.shape)}, {x.dtype}, {x.device}), got "
                f"shape {tuple(dx.shape)}, {dx.dtype}, {dx.device}"
            )
    # deterministic=False lets the operator apply the environment and torch
    # settings, exactly as the autograd backward does.
    dx_new, dweight, dbias, dinit = ops.bwd.default(
        x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu, False
    )
    if dx is not None:
        dx.copy_(dx_new)
        dx_new = dx
    return dx_new, dweight, dbias if bias is not None else None, dinit if want_dinit else None


def causal_conv1d_update_function(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    silu_activation: bool,
    cache_seqlens: Optional[torch.Tensor],
    conv_state_indices: Optional[torch.Tensor],
) -> torch.Tensor:
    """Decode step; arguments as causal_conv1d_update's, with the activation
    as silu_activation (bool). conv_state is updated in place."""
    silu = _flag(silu_activation, "silu_activation", "causal_conv1d_update_function")
    return ops.update.default(x, conv_state, weight, bias, cache_seqlens, conv_state_indices, silu)
