"""The public functions: thin wrappers over the registered operators.

Shape, dtype, device and memory checks live in the native check layer
(causal_conv1d/checks.cpp), which every backend shares. Here: the Python
types of the arguments (a non-tensor would otherwise reach torch's argument
parser, whose RuntimeError names no argument), and Python conventions
(activation strings, optional outputs, (B, D) decode inputs). Operators
are called through their one overload (ops.X.default), which skips the
overload resolution of a call through ops.X (0.2 us a call).
"""

from __future__ import annotations

import operator
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
    "tree_parents",
    "kernel_tier",
]


_Tensor = torch.Tensor
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _refuse_types(fn: str, tensors=(), optional=(), bools=()) -> None:
    """Raises the TypeError naming the first argument of the wrong Python
    type. Called only once a one-expression check of the same arguments
    failed: checking each argument in a helper call costs more than the
    kernel on a decode-sized input."""
    for name, value in tensors:
        if not isinstance(value, _Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    for name, value in optional:
        if value is not None and not isinstance(value, _Tensor):
            raise TypeError(
                f"{fn}: {name} must be a torch.Tensor or None, got {type(value).__name__}"
            )
    for name, value in bools:
        if not isinstance(value, bool):
            raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__}")
    raise AssertionError(f"{fn}: argument types refused but none is wrong")


def _int(fn: str, name: str, value) -> int:
    """A Python int (or anything with __index__, e.g. a numpy integer) that
    fits the operators' int64."""
    if type(value) is not int:
        if isinstance(value, (bool, _Tensor)):
            raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{fn}: {name} must fit in int64, got {value}")
    return value


def _byte_range(t: torch.Tensor):
    if t.numel() == 0 or t.device.type == "meta":
        return None
    below = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st < 0)
    above = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st > 0)
    return t.data_ptr() + below * t.element_size(), t.data_ptr() + (above + 1) * t.element_size()


def _overlap(a: torch.Tensor, b: Optional[torch.Tensor]) -> bool:
    """checks.cpp's check_no_overlap rule (byte ranges, whatever storage),
    for the one write causal_conv1d_fn makes itself (copy_ of final states)."""
    if b is None:
        return False
    ra, rb = _byte_range(a), _byte_range(b)
    return ra is not None and rb is not None and ra[0] < rb[1] and rb[0] < ra[1]


_SILU_NAMES = ("silu", "swish")


def _silu(activation: Optional[str], fn: str) -> bool:
    if activation is None:
        return False
    if activation in _SILU_NAMES:
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
    fn = "causal_conv1d_fn"
    if isinstance(seq_idx, str):
        # causal_conv1d_fn(x, weight, bias, "silu"): upstream's 4th positional
        # argument is seq_idx, not activation
        raise TypeError(
            f"{fn}: seq_idx must be a torch.Tensor or None, got the str {seq_idx!r}; "
            f"activation must be passed by keyword (activation={seq_idx!r}) or as the "
            f"8th positional argument"
        )
    if not (
        isinstance(x, _Tensor)
        and isinstance(weight, _Tensor)
        and (bias is None or isinstance(bias, _Tensor))
        and (seq_idx is None or isinstance(seq_idx, _Tensor))
        and (initial_states is None or isinstance(initial_states, _Tensor))
        and (final_states_out is None or isinstance(final_states_out, _Tensor))
        and isinstance(return_final_states, bool)
    ):
        _refuse_types(
            fn,
            tensors=(("x", x), ("weight", weight)),
            optional=(("bias", bias), ("seq_idx", seq_idx), ("initial_states", initial_states),
                      ("final_states_out", final_states_out)),
            bools=(("return_final_states", return_final_states),),
        )
    silu = _silu(activation, fn)
    _registrations.refuse_forward_ad(x, weight, bias, initial_states)
    if not return_final_states:
        final_states_out = None  # upstream ignores it unless final states are asked for
    if final_states_out is None:
        out, final_states = _registrations.fwd(
            x, weight, bias, seq_idx, initial_states, return_final_states, silu
        )
        return (out, final_states) if return_final_states else out
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (x, weight, bias, initial_states, final_states_out)
    ):
        # A gradient flows through final_states_out: the differentiable
        # operator computes the states, and copy_ records final_states_out's
        # new history (replacing any it had). Refused before anything runs:
        # what copy_ would refuse after the forward.
        if final_states_out.requires_grad and final_states_out.is_leaf:
            raise ValueError(
                f"{fn}: final_states_out is a leaf tensor that requires grad and cannot be "
                f"written; pass a tensor that does not require grad"
            )
        if final_states_out.is_inference() and not torch.is_inference_mode_enabled():
            raise ValueError(
                f"{fn}: final_states_out is an inference tensor, which cannot be written "
                f"outside torch.inference_mode(); pass a clone"
            )
        # the out= operator's checks on final_states_out before the forward
        # runs: shape, dtype and layout natively (on meta copies, as the
        # fake kernels do), device and memory here
        _registrations._same_device(fn, x, final_states_out=final_states_out)
        meta_out = _registrations._empty_with_layout_of(
            torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
        )
        _registrations._native_checks(
            ops.fwd_out.default, x, weight, bias, seq_idx, initial_states, meta_out,
            final_states_out, silu,
        )
        inputs = dict(x=x, weight=weight, bias=bias, seq_idx=seq_idx,
                      initial_states=initial_states)
        for name, t in inputs.items():
            if _overlap(final_states_out, t):
                raise ValueError(f"{fn}: final_states_out must not share memory with {name}")
        out, final_states = ops.fwd.default(x, weight, bias, seq_idx, initial_states, True, silu)
        final_states_out.copy_(final_states)
        return out, final_states_out
    # No gradient: the out= operator validates final_states_out (shape,
    # dtype, device, no memory shared with an input) before writing it.
    out = _registrations._empty_with_layout_of(x)
    ops.fwd_out.default(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu)
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


_update = ops.update.default


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    cache_seqlens: Optional[torch.Tensor] = None,
    conv_state_indices: Optional[torch.Tensor] = None,
    *,
    num_accepted_tokens: Optional[torch.Tensor] = None,
    query_start_loc: Optional[torch.Tensor] = None,
    channels_first: bool = False,
    retrieve_parent_token: Optional[torch.Tensor] = None,
    intermediate_conv_window: Optional[torch.Tensor] = None,
    intermediate_state_indices: Optional[torch.Tensor] = None,
    initial_state_idx: Optional[torch.Tensor] = None,
    block_idx_last_scheduled_token: Optional[torch.Tensor] = None,
    pad_slot_id: int = -1,
) -> torch.Tensor:
    """Decode step against a state cache (upstream 1.7 API), plus the
    serving engines' decode step (keyword-only arguments; vLLM's and
    SGLang's names and meanings).

    Args:
        x: (batch, dim) or (batch, dim, seqlen) new tokens, any strides; with
            query_start_loc, packed tokens (num_tokens, dim), or
            (dim, num_tokens) with channels_first=True.
        conv_state: (batch, dim, state_len) or a pool (N, dim, state_len),
            x's dtype, state_len >= width - 1; updated in place so that it
            holds the last state_len inputs.
        weight: (dim, width); bias: (dim,) optional; activation as in
            causal_conv1d_fn.
        cache_seqlens: (batch,) int32, optional: conv_state is then a circular
            buffer whose next write position is cache_seqlens[b] % state_len.
            Combines with none of the keyword-only arguments.
        conv_state_indices: (batch,) int32, optional: row b uses
            conv_state[conv_state_indices[b]]; a negative index (or
            pad_slot_id) marks a padding row (output 0, no state touched).
            With prefix caching, a (batch, blocks) int32 table instead.
        num_accepted_tokens: (batch,) int32/int64, speculative decoding: how
            many of the previous step's tokens were accepted (1 to k + 1).
            The state holds width - 2 history columns then the previous
            step's tokens (state_len = width - 1 + k for k drafts); token 0's
            window is columns [n - 1, n + width - 2), so rejected drafts are
            dropped without copying, and the state is rewritten from column 0
            with the width - 2 inputs before the window's end and this step's
            tokens (state_len must hold width - 2 + tokens).
        query_start_loc: (batch + 1,) int32/int64: sequence b is tokens
            [query_start_loc[b], query_start_loc[b + 1]) of a packed x
            (lengths may differ, 0 included). Tokens outside every sequence
            output 0.
        channels_first: packed x is (dim, num_tokens).
        retrieve_parent_token: (batch, >= tokens) int32/int64, a token tree
            (EAGLE): token j >= 1 convolves its ancestors (parent in [0, j))
            instead of its left neighbours; entry 0 is ignored.
        intermediate_conv_window: (rows, >= tokens, dim, width - 1), x's
            dtype: window [row, j] receives token j's last width - 1 inputs
            (oldest first, along its ancestors) so the engine can commit the
            accepted branch; conv_state is then only read.
        intermediate_state_indices: (batch,) int32: the windows row of each
            sequence (default: b; negative: no windows).
        initial_state_idx, block_idx_last_scheduled_token: (batch,) int32,
            prefix caching: the columns of the conv_state_indices table whose
            rows are read and written.
        pad_slot_id: an index meaning "padding" (negative ones are too).

    Returns:
        out shaped like x, x's dtype. Not differentiable (as upstream's): out
        does not require grad, whatever the inputs.
    """
    fn = "causal_conv1d_update"
    if not (
        isinstance(x, _Tensor)
        and isinstance(conv_state, _Tensor)
        and isinstance(weight, _Tensor)
        and (bias is None or isinstance(bias, _Tensor))
        and (cache_seqlens is None or isinstance(cache_seqlens, _Tensor))
        and (conv_state_indices is None or isinstance(conv_state_indices, _Tensor))
    ):
        _refuse_types(
            fn,
            tensors=(("x", x), ("conv_state", conv_state), ("weight", weight)),
            optional=(("bias", bias), ("cache_seqlens", cache_seqlens),
                      ("conv_state_indices", conv_state_indices)),
        )
    # decode calls this once per layer and token: no helper call for the
    # usual activations, and the overload resolved once at import
    silu = activation is not None and (activation in _SILU_NAMES or _silu(activation, fn))
    if (
        num_accepted_tokens is None
        and query_start_loc is None
        and retrieve_parent_token is None
        and intermediate_conv_window is None
        and initial_state_idx is None
        and block_idx_last_scheduled_token is None
        and intermediate_state_indices is None
        and pad_slot_id == -1
        and channels_first is False
    ):
        return _update(x, conv_state, weight, bias, cache_seqlens, conv_state_indices, silu)
    return _update_serving(
        fn, x, conv_state, weight, bias, cache_seqlens, conv_state_indices, silu,
        num_accepted_tokens, query_start_loc, channels_first, retrieve_parent_token,
        intermediate_conv_window, intermediate_state_indices, initial_state_idx,
        block_idx_last_scheduled_token, pad_slot_id,
    )


def _update_serving(
    fn, x, conv_state, weight, bias, cache_seqlens, conv_state_indices, silu,
    num_accepted_tokens, query_start_loc, channels_first, retrieve_parent_token,
    intermediate_conv_window, intermediate_state_indices, initial_state_idx,
    block_idx_last_scheduled_token, pad_slot_id,
):
    optional = (
        ("num_accepted_tokens", num_accepted_tokens), ("query_start_loc", query_start_loc),
        ("retrieve_parent_token", retrieve_parent_token),
        ("intermediate_conv_window", intermediate_conv_window),
        ("intermediate_state_indices", intermediate_state_indices),
        ("initial_state_idx", initial_state_idx),
        ("block_idx_last_scheduled_token", block_idx_last_scheduled_token),
    )
    if not all(t is None or isinstance(t, _Tensor) for _, t in optional) or not isinstance(
        channels_first, bool
    ):
        _refuse_types(fn, optional=optional, bools=(("channels_first", channels_first),))
    pad_slot_id = _int(fn, "pad_slot_id", pad_slot_id)
    if cache_seqlens is not None:
        raise ValueError(
            f"{fn}: cache_seqlens (a circular buffer) does not combine with the serving "
            "arguments (num_accepted_tokens, query_start_loc, retrieve_parent_token, "
            "intermediate_conv_window, initial_state_idx, pad_slot_id, ...)"
        )
    if channels_first and query_start_loc is None:
        raise ValueError(f"{fn}: channels_first describes packed x and needs query_start_loc")
    packed = query_start_loc is not None
    # the op takes packed tokens as (dim, num_tokens)
    x_op = x.transpose(-1, -2) if packed and not channels_first and x.dim() == 2 else x
    out = ops.update_serving.default(
        x_op, conv_state, weight, bias, conv_state_indices, num_accepted_tokens,
        query_start_loc, retrieve_parent_token, intermediate_conv_window,
        intermediate_state_indices, initial_state_idx, block_idx_last_scheduled_token,
        None, None, None, 0, pad_slot_id, silu,
    )
    return out.transpose(-1, -2) if x_op is not x else out


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
    fn = "causal_conv1d_varlen_states"
    if not (isinstance(x, _Tensor) and isinstance(cu_seqlens, _Tensor)):
        _refuse_types(fn, tensors=(("x", x), ("cu_seqlens", cu_seqlens)))
    state_len = _int(fn, "state_len", state_len)
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
    *,
    initial_state_idx: Optional[torch.Tensor] = None,
    block_idx_first_scheduled_token: Optional[torch.Tensor] = None,
    block_idx_last_scheduled_token: Optional[torch.Tensor] = None,
    num_computed_tokens: Optional[torch.Tensor] = None,
    block_size: int = 0,
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

    Prefix caching (vLLM's automatic prefix caching; keyword-only, all
    together): cache_indices is a (batch, blocks) int32 table of pool rows,
    one per block of block_size tokens of each sequence.
        initial_state_idx: (batch,) int32, the column whose row holds the
            initial state (read when has_initial_state).
        block_idx_last_scheduled_token: (batch,) int32, the column whose row
            receives the final state.
        block_idx_first_scheduled_token: (batch,) int32, the column of the
            first block this call completes: the state after every block
            completed inside the call (block boundaries counted from the
            sequence's start, num_computed_tokens earlier tokens included)
            goes to the following columns, so a later request can resume
            from any cached block. last - first must equal the number of
            such blocks.
        num_computed_tokens: (batch,) int32, each sequence's tokens before
            this call.
        block_size: tokens per block (> 0).
    A sequence of length 0 is then skipped (its rows untouched).

    Returns:
        out shaped like x, x's dtype.
    """
    fn = "causal_conv1d_packed_fwd"
    if not (
        isinstance(x, _Tensor)
        and isinstance(weight, _Tensor)
        and (bias is None or isinstance(bias, _Tensor))
        and isinstance(cu_seqlens, _Tensor)
        and isinstance(conv_states, _Tensor)
        and (cache_indices is None or isinstance(cache_indices, _Tensor))
        and (has_initial_state is None or isinstance(has_initial_state, _Tensor))
        and isinstance(channels_first, bool)
    ):
        _refuse_types(
            fn,
            tensors=(("x", x), ("weight", weight), ("cu_seqlens", cu_seqlens),
                     ("conv_states", conv_states)),
            optional=(("bias", bias), ("cache_indices", cache_indices),
                      ("has_initial_state", has_initial_state)),
            bools=(("channels_first", channels_first),),
        )
    pad_slot_id = _int(fn, "pad_slot_id", pad_slot_id)
    silu = _silu(activation, fn)
    x_dt = x if channels_first else x.transpose(-1, -2) if x.dim() == 2 else x
    if (
        initial_state_idx is not None
        or block_idx_first_scheduled_token is not None
        or block_idx_last_scheduled_token is not None
        or num_computed_tokens is not None
        or block_size != 0
    ):
        prefix = (("initial_state_idx", initial_state_idx),
                  ("block_idx_first_scheduled_token", block_idx_first_scheduled_token),
                  ("block_idx_last_scheduled_token", block_idx_last_scheduled_token),
                  ("num_computed_tokens", num_computed_tokens))
        if not all(t is None or isinstance(t, _Tensor) for _, t in prefix):
            _refuse_types(fn, optional=prefix)
        block_size = _int(fn, "block_size", block_size)
        if has_initial_state is None and cu_seqlens.dim() == 1 and cu_seqlens.numel() > 0:
            # the default, no initial states: the serving op, which also
            # runs decode steps, reads the rows unless told otherwise
            has_initial_state = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.bool,
                                            device=x.device)
        # the serving op's packed prefill (serving.h): one sequence per task
        out = ops.update_serving.default(
            x_dt, conv_states, weight, bias, cache_indices, None, cu_seqlens, None, None, None,
            initial_state_idx, block_idx_last_scheduled_token, has_initial_state,
            block_idx_first_scheduled_token, num_computed_tokens, block_size, pad_slot_id, silu,
        )
        return out if channels_first else out.transpose(-1, -2)
    out = ops.fwd_packed.default(
        x_dt, weight, bias, cu_seqlens, conv_states, cache_indices, has_initial_state,
        pad_slot_id, silu,
    )
    return out if channels_first else out.transpose(-1, -2)


def tree_parents(retrieve_next_token: torch.Tensor,
                 retrieve_next_sibling: torch.Tensor) -> torch.Tensor:
    """Token trees as SGLang passes them, as the parents
    `causal_conv1d_update`'s `retrieve_parent_token` takes.

    retrieve_next_token:   (B, L) int32 or int64, token i's first child, or -1
    retrieve_next_sibling: (B, L) int32 or int64, the next child of token i's
                           parent, or -1
    returns:               (B, L) int32 on their device: token j's parent;
                           -1 for token 0 (the root); 0 for a token no entry
                           reaches, as SGLang's verify kernel takes it

    Tensor ops without a host synchronisation (a CUDA graph can hold it):
    each token's first sibling comes from pointer jumping along the sibling
    links, its parent is whoever names that sibling its first child. A
    child comes after its parent and a sibling after the one naming it, as
    SGLang's kernel computes them in token order; on host tensors a table
    that breaks this, points outside [-1, L) or reaches a token twice raises
    a ValueError naming it (device tensors are not read back: an index
    outside is treated as -1, and a parent out of order is then refused or
    clamped by `causal_conv1d_update` itself).
    """
    fn = "tree_parents"
    tables = (("retrieve_next_token", retrieve_next_token),
              ("retrieve_next_sibling", retrieve_next_sibling))
    if not all(isinstance(t, _Tensor) for _, t in tables):
        _refuse_types(fn, tensors=tables)
    for name, t in tables:
        if t.dtype not in (torch.int32, torch.int64) or t.dim() != 2:
            raise ValueError(f"{fn}: {name} must be a 2-D int32 or int64 tensor, got "
                             f"{t.dim()}-D {t.dtype}")
    if retrieve_next_token.shape != retrieve_next_sibling.shape or \
            retrieve_next_token.device != retrieve_next_sibling.device:
        raise ValueError(f"{fn}: retrieve_next_token ({tuple(retrieve_next_token.shape)} on "
                         f"{retrieve_next_token.device}) and retrieve_next_sibling "
                         f"({tuple(retrieve_next_sibling.shape)} on "
                         f"{retrieve_next_sibling.device}) must match")
    B, L = retrieve_next_token.shape
    tokens = torch.arange(L, device=retrieve_next_token.device).expand(B, L)
    if retrieve_next_token.device.type == "cpu":
        claimed = torch.zeros(B, L, dtype=torch.int64)
        for name, t in tables:
            bad = (t != -1) & ((t <= tokens) | (t >= L))
            if bad.any():
                b, i = (int(v) for v in bad.nonzero()[0])
                raise ValueError(f"{fn}: {name}[{b}, {i}] = {int(t[b, i])}: must be -1 or a "
                                 f"later token, in ({i}, {L})")
            live = t != -1
            claimed.scatter_add_(1, torch.where(live, t, 0).long(), live.long())
        if (claimed > 1).any():
            b, j = (int(v) for v in (claimed > 1).nonzero()[0])
            raise ValueError(f"{fn}: token {j} of sequence {b} is reached twice "
                             f"(a first child or next sibling of two tokens)")
    # -1 entries scatter into a spare column L, dropped afterwards
    def inverse(t):
        to = torch.where((t >= 0) & (t < L), t.long(), L)
        return torch.full((B, L + 1), -1, dtype=torch.int64, device=t.device) \
            .scatter_(1, to, tokens)[:, :L]

    owner, previous = inverse(retrieve_next_token), inverse(retrieve_next_sibling)
    first = torch.where(previous >= 0, previous, tokens)
    for _ in range(max(1, (L - 1).bit_length())):  # chains of up to L - 1 links
        first = first.gather(1, first)
    parents = owner.gather(1, first)
    parents = torch.where((parents < 0) & (tokens > 0), 0, parents)
    return parents.to(torch.int32)


def kernel_tier() -> str:
    """Which build of the kernels this process runs.

    On CPU, the instruction-set tier picked from the CPU's features when the
    first op runs: "default" (portable), "avx2" (AVX2/FMA), "avx512" or
    "avx512_bf16" (AVX-512 with hardware bf16 rounding). ATEN_CPU_CAPABILITY
    caps it as it caps PyTorch's own kernels, and CAUSAL_CONV1D_CPU_TIER asks
    for a lower tier by name. The CUDA variant returns "cuda".
    """
    return ops.kernel_tier()
