"""The public functions: thin wrappers over the registered operators.

Argument checks live in the native check layer (causal_conv1d/checks.cpp),
which every backend shares; here we only translate Python conventions
(activation strings, optional outputs, (B, D) decode inputs). Operators
are called through their one overload (ops.X.default), which skips the
overload resolution of a call through ops.X (0.2 us a call).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _registrations  # fake kernels and autograd
from ._ops import ops

__all__ = [
    "CausalConv1dFn",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "causal_conv1d_varlen_states",
    "causal_conv1d_packed_fwd",
    "kernel_tier",
]


def _silu(activation: Optional[str], fn: str) -> bool:
    if activation is None:
        return False
    if activation in ("silu", "swish"):
        return True
    raise ValueError(f"{fn}: activation must be None, 'silu' or 'swish', got {activation!r}")


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    return_final_states: bool = False,
    final_states_out: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
):
    """Causal depthwise 1D convolution (upstream causal-conv1d 1.7 API).

    Args:
        x: (batch, dim, seqlen), float32/float16/bfloat16 (float64 on CPU),
            any strides: contiguous, channel-last views such as
            ``y.transpose(1, 2)`` of a (batch, seqlen, dim) tensor, slices.
        weight: (dim, width), width 1..32, any of the same dtypes.
        bias: (dim,), weight's dtype, optional.
        seq_idx: (batch, seqlen) int32, optional. Tokens with different ids
            never see each other; initial_states feed only the first segment
            (id == seq_idx[:, 0]); tokens with id < 0 are padding (output 0).
        initial_states: (batch, dim, width - 1), x's dtype, optional: the
            inputs at positions -(width-1) .. -1.
        return_final_states: also return final_states (batch, dim, width-1),
            the last width-1 inputs (of the last segment with seq_idx).
        final_states_out: optional (batch, dim, width - 1) tensor that
            receives final_states; ignored unless return_final_states (as
            upstream does).
        activation: None, "silu" or "swish".

    Returns:
        out (batch, dim, seqlen) with x's dtype and stride order, or
        (out, final_states) when return_final_states.
    """
    if isinstance(seq_idx, str):
        raise TypeError(
            f"causal_conv1d_fn: seq_idx (the 4th positional argument) must be a tensor or None, "
            f"got the string {seq_idx!r}; pass activation by keyword (activation={seq_idx!r})"
        )
    silu = _silu(activation, "causal_conv1d_fn")
    if not return_final_states:
        final_states_out = None  # upstream ignores it unless final states are asked for
    if final_states_out is None:
        out, final_states = _registrations.fwd(
            x, weight, bias, seq_idx, initial_states, return_final_states, silu
        )
        return (out, final_states) if return_final_states else out
    # The out= operator's check layer validates final_states_out (shape,
    # dtype, device, no memory shared with any input) before writing it.
    out = _registrations._empty_with_layout_of(x)
    ops.fwd_out.default(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, initial_states)
    ):
        # fwd_out has no autograd: run the differentiable operator for the graph
        out, final_states = ops.fwd.default(x, weight, bias, seq_idx, initial_states, True, silu)
        final_states_out.copy_(final_states)
    return out, final_states_out


class CausalConv1dFn:
    """Upstream compatibility: ``CausalConv1dFn.apply(...)`` takes
    causal_conv1d_fn's arguments positionally. Differentiation goes through
    the operator's registered autograd, so no autograd.Function is needed."""

    @staticmethod
    def apply(x, weight, bias=None, seq_idx=None, initial_states=None,
              return_final_states=False, final_states_out=None, activation=None):
        return causal_conv1d_fn(x, weight, bias, seq_idx, initial_states,
                                return_final_states, final_states_out, activation)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    cache_seqlens: Optional[torch.Tensor] = None,
    conv_state_indices: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decode step against a state cache (upstream 1.7 API).

    Args:
        x: (batch, dim) or (batch, dim, seqlen) new tokens, any strides.
        conv_state: (batch, dim, state_len) or a pool (N, dim, state_len),
            x's dtype, state_len >= width - 1; updated in place so that it
            holds the last state_len inputs.
        weight: (dim, width); bias: (dim,) optional; activation as in
            causal_conv1d_fn.
        cache_seqlens: (batch,) int32, optional: conv_state is then a circular
            buffer whose next write position is cache_seqlens[b] % state_len.
        conv_state_indices: (batch,) int32, optional: row b uses
            conv_state[conv_state_indices[b]]; a negative index marks a
            padding row (output 0, no state touched).

    Returns:
        out shaped like x, x's dtype. Not differentiable (as upstream's): out
        does not require grad, whatever the inputs.
    """
    silu = _silu(activation, "causal_conv1d_update")
    return ops.update.default(
        x, conv_state, weight, bias, cache_seqlens, conv_state_indices, silu
    )


def causal_conv1d_varlen_states(
    x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int
) -> torch.Tensor:
    """States of packed sequences (mamba_ssm API).

    Args:
        x: (total_tokens, dim) packed sequences.
        cu_seqlens: (batch + 1,) int32 offsets, non-decreasing, last <= total_tokens.
        state_len: columns of the returned states.

    Returns:
        (batch, dim, state_len), x's dtype: the last state_len tokens of each
        sequence, right-aligned, zero where a sequence is shorter.
    """
    return ops.varlen_states.default(x, cu_seqlens, state_len)


def causal_conv1d_packed_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    cu_seqlens: torch.Tensor,
    conv_states: torch.Tensor,
    cache_indices: Optional[torch.Tensor] = None,
    has_initial_state: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    pad_slot_id: int = -1,
    channels_first: bool = False,
) -> torch.Tensor:
    """Prefill of many packed sequences whose states live in a shared pool
    (what vLLM / SGLang call with query_start_loc and paged conv states).

    Args:
        x: packed tokens, (total_tokens, dim), or (dim, total_tokens) with
            channels_first=True (e.g. a transposed projection); any strides.
        weight: (dim, width); bias: (dim,) or None.
        cu_seqlens: (batch + 1,) int32 sequence offsets (query_start_loc).
        conv_states: (num_slots, dim, state_len >= width - 1) pool, x's
            dtype, updated in place: each sequence's slot receives its
            last state_len inputs (previous state followed by its tokens).
        cache_indices: (batch,) int32 slot per sequence (default: b).
        has_initial_state: (batch,) bool: read the slot's state as the
            initial state (otherwise zeros). Default: all False.
        activation: None, "silu" or "swish".
        pad_slot_id: a cache index meaning "padding": that sequence is
            skipped (output 0, pool untouched). Negative indices are padding too.
        channels_first: x is (dim, total_tokens).

    Returns:
        out shaped like x, x's dtype.
    """
    silu = _silu(activation, "causal_conv1d_packed_fwd")
    x_dt = x if channels_first else x.transpose(-1, -2) if x.dim() == 2 else x
    out = ops.fwd_packed.default(
        x_dt, weight, bias, cu_seqlens, conv_states, cache_indices, has_initial_state,
        pad_slot_id, silu,
    )
    return out if channels_first else out.transpose(-1, -2)


def kernel_tier() -> str:
    """Which build of the kernels this process runs.

    On CPU, the instruction-set tier picked from the CPU's features when the
    first op runs: "default" (portable), "avx2" (AVX2/FMA), "avx512" or
    "avx512_bf16" (AVX-512 with hardware bf16 rounding). ATEN_CPU_CAPABILITY
    caps it as it caps PyTorch's own kernels, and CAUSAL_CONV1D_CPU_TIER asks
    for a lower tier by name. The CUDA variant returns "cuda".
    """
    return ops.kernel_tier()
