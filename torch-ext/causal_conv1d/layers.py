"""Layers for ``kernels.kernelize``.

Two kinds:

``causal_conv1d_fn`` / ``causal_conv1d_update``
    named and shaped as transformers maps them: its Mamba-family models
    decorate their plain-PyTorch convolution functions with
    ``use_kernel_func_from_hub_with_fallback("causal_conv1d_fn", ...)`` and
    ``("causal_conv1d_update", ...)``, and kernelize swaps those for the
    layers of the same name here. Their ``forward`` takes exactly the
    arguments of transformers' fallbacks.
``CausalConv1d`` / ``CausalConv1dUpdate``
    drop-in forwards for a model's own ``nn.Conv1d``-based module (see the
    host contract below and examples/kernelize_mamba.py).

All four call the public functions, so there is one forward path.

kernelize replaces the ``forward`` of a model's module with the ``forward``
of a layer here, bound to that module, so a layer reads the host module's
attributes and keeps no state of its own (no ``__init__``, no members but
``has_backward`` / ``can_torch_compile``). The host class opts in with
``@kernels.use_kernel_forward_from_hub("<layer name>")`` and its own forward
must have the same parameters (kinds and count) and compute the same thing
in plain PyTorch: that forward is what runs when nothing is kernelized.

Host contract, shared by both layers:

``weight``
    (dim, 1, width) - the weight of a depthwise ``nn.Conv1d(dim, dim, width,
    groups=dim, padding=width - 1)``, as Mamba mixers hold it - or (dim, width).
``bias``
    (dim,) or None.
``activation``
    None, ``"silu"`` or ``"swish"`` (optional attribute; missing means None).
    Applied after the convolution, as ``causal_conv1d_fn`` does.

A depthwise ``nn.Conv1d`` subclass with ``padding=width - 1`` satisfies the
first two; its plain-PyTorch forward is ``act(conv1d(x)[..., :seqlen])``.
Stride and dilation must be 1.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import functions

__all__ = ["causal_conv1d_fn", "causal_conv1d_update", "CausalConv1d", "CausalConv1dUpdate"]


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """(dim, width) view of a (dim, width) or depthwise (dim, 1, width) weight."""
    return weight.reshape(weight.shape[0], weight.shape[-1]) if weight.dim() == 3 else weight


class causal_conv1d_fn(nn.Module):  # noqa: N801 - the name transformers maps
    """transformers' ``causal_conv1d_fn`` (prefill and training).

    ``forward(hidden_states, weight, bias=None, activation=None, **kwargs)``:
    hidden_states (batch, dim, seqlen), usually the channel-last view
    ``h.transpose(1, 2)`` of a (batch, seqlen, dim) projection; weight
    (dim, width) or (dim, 1, width); bias (dim,) or None; activation None,
    "silu" or "swish". ``kwargs`` may carry ``seq_idx`` ((batch, seqlen)
    int32 segment ids of packed sequences); the model's other keyword
    arguments are ignored, as transformers' own fallback ignores them.
    Returns (batch, dim, seqlen) in hidden_states' dtype. Differentiable.
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, hidden_states, weight, bias=None, activation=None, **kwargs):
        return functions.causal_conv1d_fn(
            hidden_states, _taps(weight), bias, seq_idx=kwargs.get("seq_idx"),
            activation=activation,
        )


class causal_conv1d_update(nn.Module):  # noqa: N801 - the name transformers maps
    """transformers' ``causal_conv1d_update`` (one decode step).

    ``forward(hidden_states, conv_state, weight, bias=None, activation=None)``:
    hidden_states (batch, dim, seqlen) or (batch, dim); conv_state (batch,
    dim, state_len >= width - 1) in hidden_states' dtype, updated in place
    to hold the last state_len inputs; weight, bias, activation as for
    ``causal_conv1d_fn``. Returns shaped like hidden_states. Inference only
    (the in-place state update has no backward).
    """

    has_backward = False
    can_torch_compile = True

    def forward(self, hidden_states, conv_state, weight, bias=None, activation=None):
        return functions.causal_conv1d_update(
            hidden_states, conv_state, _taps(weight), bias, activation=activation
        )


class CausalConv1d(nn.Module):
    """Causal depthwise conv over a whole sequence (prefill / training).

    Host forward signature::

        forward(self, x, seq_idx=None, initial_states=None, return_final_states=False)

    x: (batch, dim, seqlen), any strides (e.g. ``h.transpose(1, 2)`` of a
    (batch, seqlen, dim) projection). seq_idx: (batch, seqlen) int32 segment
    ids for packed sequences. initial_states: (batch, dim, width - 1), the
    inputs before position 0. Returns act(conv(x)) as (batch, dim, seqlen),
    or (out, final_states) with final_states (batch, dim, width - 1) - the
    last width - 1 inputs, i.e. what a decode cache holds - when
    return_final_states. Differentiable in x, weight, bias and
    initial_states; the operators have fake kernels, so torch.compile traces
    them.
    """

    has_backward = True
    can_torch_compile = True

    def forward(
        self,
        x: torch.Tensor,
        seq_idx: Optional[torch.Tensor] = None,
        initial_states: Optional[torch.Tensor] = None,
        return_final_states: bool = False,
    ):
        return functions.causal_conv1d_fn(
            x,
            _taps(self.weight),
            self.bias,
            seq_idx=seq_idx,
            initial_states=initial_states,
            return_final_states=return_final_states,
            activation=getattr(self, "activation", None),
        )


class CausalConv1dUpdate(nn.Module):
    """Decode step against a conv-state cache, updated in place.

    Host forward signature::

        forward(self, x, conv_state, cache_seqlens=None, conv_state_indices=None)

    x: (batch, dim) one new token, or (batch, dim, seqlen) a few. conv_state:
    (batch, dim, state_len >= width - 1), or a pool (slots, dim, state_len)
    with conv_state_indices (batch,) int32 picking each row's slot (negative:
    padding row, output 0, no state touched); it holds the last state_len
    inputs, oldest first, and is updated in place. cache_seqlens (batch,)
    int32 makes it a circular buffer instead (next write at
    cache_seqlens % state_len). Returns act(conv) shaped like x.

    Inference only: the in-place state update has no backward.

    A decode module usually shares its parameters with the block's
    ``CausalConv1d`` host; expose them as properties (see
    examples/kernelize_mamba.py) rather than registering them twice.
    """

    has_backward = False
    can_torch_compile = True

    def forward(
        self,
        x: torch.Tensor,
        conv_state: torch.Tensor,
        cache_seqlens: Optional[torch.Tensor] = None,
        conv_state_indices: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return functions.causal_conv1d_update(
            x,
            conv_state,
            _taps(self.weight),
            self.bias,
            activation=getattr(self, "activation", None),
            cache_seqlens=cache_seqlens,
            conv_state_indices=conv_state_indices,
        )
