"""Fake (meta) kernels and autograd for the registered operators.

Registered through add_op_namespace_prefix so that each build's unique
namespace is used; this makes torch.compile and torch.library.opcheck work.
The fake kernels first run the native operators' own checks on meta
tensors (_native_checks), then return the shapes and stride orders the
native operators return (causal_conv1d/ops.cpp), symbolic where
torch.compile made sizes symbolic. fwd() is how the public functions call the
forward: without the Python autograd kernel's cost when no gradient is needed.
"""

from __future__ import annotations

import torch

try:
    from torch.fx.experimental.symbolic_shapes import optimization_hint
except ImportError:  # torch releases before the rename
    from torch.fx.experimental.symbolic_shapes import hint_int as optimization_hint

from ._ops import add_op_namespace_prefix, ops


def _empty_with_layout_of(t: torch.Tensor) -> torch.Tensor:
    """Dense tensor with t's sizes, dtype and stride order (ops.cpp's rule)."""
    order = list(range(t.dim()))
    # stable sort by stride, outermost first; size-1 dims keep their place
    for i in range(1, len(order)):
        j = i
        while j > 0:
            a, b = order[j - 1], order[j]
            if t.size(a) == 1 or t.size(b) == 1 or not t.stride(b) > t.stride(a):
                break
            order[j - 1], order[j] = b, a
            j -= 1
    # the strides of a contiguous tensor of the dims in that order
    strides = [0] * len(order)
    stride = 1
    for d in reversed(order):
        strides[d] = stride
        stride *= max(t.size(d), 1)
    return t.new_empty_strided(t.shape, strides)


def _none_like(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty((0,))


def _same_device(op: str, x: torch.Tensor, **tensors) -> None:
    """The native device check (every tensor on x's device), which
    _native_checks cannot run: it sees every tensor on the meta device. A
    call mixing devices with "meta" is dispatched here too (the Meta key
    outranks the real backend)."""
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: {name} must be on {x.device} like x, got {t.device}")


_backend_keys = None


def _hint(n):
    """A concrete value for a size torch.compile made symbolic, without
    adding a guard (the value it was traced with)."""
    return n if type(n) is int else optimization_hint(n)


def _as_meta(a):
    if not isinstance(a, torch.Tensor):
        return _hint(a) if isinstance(a, torch.SymInt) else a
    return torch.empty_strided(
        [_hint(n) for n in a.shape], [_hint(n) for n in a.stride()], dtype=a.dtype, device="meta"
    )


def _native_checks(op, *args) -> None:
    """Runs the operator's own host path (causal_conv1d/ops.cpp: the checks
    of checks.cpp, then the allocation; meta tensors stop before the run) on
    meta tensors of the arguments' sizes, strides and dtypes, so fake and
    meta calls refuse what the real ones refuse, with the same messages. The
    call goes straight to the backend kernel: through the dispatcher, meta
    tensors would come back here. Index values are checked only by the real
    call, which still runs every check on every call."""
    global _backend_keys
    if _backend_keys is None:
        # the key this variant registered its kernels for (torch_binding.cpp)
        cuda = torch._C._dispatch_has_kernel_for_dispatch_key(add_op_namespace_prefix("fwd"), "CUDA")
        key = torch._C.DispatchKey.CUDA if cuda else torch._C.DispatchKey.CPU
        _backend_keys = torch._C.DispatchKeySet(key)
    op.redispatch(_backend_keys, *[_as_meta(a) for a in args])


@torch.library.register_fake(add_op_namespace_prefix("fwd"))
def _fwd_fake(x, weight, bias, seq_idx, initial_states, return_final_states, silu):
    _same_device("causal_conv1d_fn", x, weight=weight, bias=bias, seq_idx=seq_idx,
                 initial_states=initial_states)
    _native_checks(ops.fwd.default, x, weight, bias, seq_idx, initial_states,
                   return_final_states, silu)
    out = _empty_with_layout_of(x)
    if return_final_states:
        final = x.new_empty((x.shape[0], x.shape[1], weight.shape[1] - 1))
    else:
        final = _none_like(x)
    return out, final


@torch.library.register_fake(add_op_namespace_prefix("fwd_out"))
def _fwd_out_fake(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu):
    _same_device("causal_conv1d_fn", x, weight=weight, bias=bias, seq_idx=seq_idx,
                 initial_states=initial_states, out=out, final_states_out=final_states_out)
    _native_checks(ops.fwd_out.default, x, weight, bias, seq_idx, initial_states, out,
                   final_states_out, silu)
    return None


@torch.library.register_fake(add_op_namespace_prefix("bwd"))
def _bwd_fake(x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu, deterministic):
    _same_device("causal_conv1d_fn backward", x, weight=weight, bias=bias, seq_idx=seq_idx,
                 initial_states=initial_states, dout=dout, dfinal_states=dfinal_states)
    _native_checks(ops.bwd.default, x, weight, bias, seq_idx, initial_states, dout,
                   dfinal_states, silu, deterministic)
    dx = _empty_with_layout_of(x)
    dweight = weight.new_empty(weight.shape)
    dbias = weight.new_empty((weight.shape[0],)) if bias is not None else _none_like(weight)
    if initial_states is not None:
        dinit = x.new_empty((x.shape[0], x.shape[1], weight.shape[1] - 1))
    else:
        dinit = _none_like(x)
    return dx, dweight, dbias, dinit


@torch.library.register_fake(add_op_namespace_prefix("update"))
def _update_fake(x, conv_state, weight, bias, cache_seqlens, conv_state_indices, silu):
    _same_device("causal_conv1d_update", x, conv_state=conv_state, weight=weight, bias=bias,
                 cache_seqlens=cache_seqlens, conv_state_indices=conv_state_indices)
    _native_checks(ops.update.default, x, conv_state, weight, bias, cache_seqlens,
                   conv_state_indices, silu)
    return _empty_with_layout_of(x)


@torch.library.register_fake(add_op_namespace_prefix("update_serving"))
def _update_serving_fake(x, conv_state, weight, bias, conv_state_indices, num_accepted_tokens,
                         query_start_loc, retrieve_parent_token, intermediate_conv_window,
                         intermediate_state_indices, initial_state_idx,
                         block_idx_last_scheduled_token, has_initial_state,
                         block_idx_first_scheduled_token, num_computed_tokens, block_size,
                         pad_slot_id, silu):
    _same_device("causal_conv1d_update", x, conv_state=conv_state, weight=weight, bias=bias,
                 conv_state_indices=conv_state_indices, num_accepted_tokens=num_accepted_tokens,
                 query_start_loc=query_start_loc, retrieve_parent_token=retrieve_parent_token,
                 intermediate_conv_window=intermediate_conv_window,
                 intermediate_state_indices=intermediate_state_indices,
                 initial_state_idx=initial_state_idx,
                 block_idx_last_scheduled_token=block_idx_last_scheduled_token,
                 has_initial_state=has_initial_state,
                 block_idx_first_scheduled_token=block_idx_first_scheduled_token,
                 num_computed_tokens=num_computed_tokens)
    _native_checks(ops.update_serving.default, x, conv_state, weight, bias, conv_state_indices,
                   num_accepted_tokens, query_start_loc, retrieve_parent_token,
                   intermediate_conv_window, intermediate_state_indices, initial_state_idx,
                   block_idx_last_scheduled_token, has_initial_state,
                   block_idx_first_scheduled_token, num_computed_tokens, block_size, pad_slot_id,
                   silu)
    return _empty_with_layout_of(x)


@torch.library.register_fake(add_op_namespace_prefix("varlen_states"))
def _varlen_states_fake(x, cu_seqlens, state_len):
    _same_device("causal_conv1d_varlen_states", x, cu_seqlens=cu_seqlens)
    _native_checks(ops.varlen_states.default, x, cu_seqlens, state_len)
    return x.new_empty((cu_seqlens.shape[0] - 1, x.shape[1], state_len))


@torch.library.register_fake(add_op_namespace_prefix("fwd_packed"))
def _fwd_packed_fake(
    x, weight, bias, cu_seqlens, conv_states, cache_indices, has_initial_state, pad_slot_id, silu
):
    _same_device("causal_conv1d_packed_fwd", x, weight=weight, bias=bias, cu_seqlens=cu_seqlens,
                 conv_states=conv_states, cache_indices=cache_indices,
                 has_initial_state=has_initial_state)
    _native_checks(ops.fwd_packed.default, x, weight, bias, cu_seqlens, conv_states,
                   cache_indices, has_initial_state, pad_slot_id, silu)
    return _empty_with_layout_of(x)


# ---------------------------------------------------------------------------
# autograd for fwd: the backward operator recomputes silu from x.


def _fwd_setup_context(ctx, inputs, output):
    x, weight, bias, seq_idx, initial_states, return_final_states, silu = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx, initial_states)
    ctx.silu = silu
    ctx.has_bias = bias is not None
    ctx.has_initial_states = initial_states is not None
    ctx.return_final_states = return_final_states


def _fwd_backward(ctx, dout, dfinal_states):
    x, weight, bias, seq_idx, initial_states = ctx.saved_tensors
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (dout, dfinal_states, x, weight, bias, initial_states)
    ):
        # bwd has no derivative of its own: a graph of this backward would
        # give zero second derivatives, so refuse it where it is asked for.
        raise NotImplementedError(
            "causal_conv1d_fn: double backward (a backward with create_graph=True) is not "
            "supported"
        )
    if not ctx.return_final_states:
        dfinal_states = None
    if dout is None:
        dout = torch.zeros_like(x)
    dx, dweight, dbias, dinit = ops.bwd(
        x, weight, bias, seq_idx, initial_states, dout, dfinal_states, ctx.silu, False
    )
    return (
        dx,
        dweight,
        dbias if ctx.has_bias else None,
        None,
        dinit if ctx.has_initial_states else None,
        None,
        None,
    )


torch.library.register_autograd(
    add_op_namespace_prefix("fwd"), _fwd_backward, setup_context=_fwd_setup_context
)


def fwd(x, weight, bias, seq_idx, initial_states, return_final_states, silu):
    """ops.fwd for eager callers, without the autograd kernel's cost when
    nothing needs a gradient.

    The one place the eager path relies on torch internals, for a measured
    host cost (figures in the commit that introduced and kept it):
    register_autograd's kernel is Python, so every call through ops.fwd,
    even one that needs no gradient, goes from the dispatcher back into the
    interpreter and redispatches below autograd, which nearly doubles the
    host time of a small call. When grad mode is off or no input requires
    grad, that kernel would do nothing but the redispatch, so the call
    enters the dispatcher below autograd directly
    (_AutoDispatchBelowAutograd). Under torch.compile and export the call
    goes through the operator, so they trace it as they always did."""
    args = (x, weight, bias, seq_idx, initial_states, return_final_states, silu)
    if torch.compiler.is_compiling() or (
        torch.is_grad_enabled()
        and (
            x.requires_grad
            or weight.requires_grad
            or (bias is not None and bias.requires_grad)
            or (initial_states is not None and initial_states.requires_grad)
        )
    ):
        return ops.fwd.default(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return ops.fwd.default(*args)


def refuse_forward_ad(x, weight, bias, initial_states) -> None:
    """Dual tensors would pass through the operators without a tangent:
    forward mode is refused instead. forward_ad._current_level (a module
    global) keeps the public unpack_dual check off calls made outside any
    dual level."""
    if torch.autograd.forward_ad._current_level >= 0 and any(
        t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None
        for t in (x, weight, bias, initial_states)
    ):
        raise NotImplementedError(
            "causal_conv1d_fn: forward-mode AD (dual tensors, torch.func.jvp) is not "
            "supported; gradients come from reverse mode (backward)"
        )
