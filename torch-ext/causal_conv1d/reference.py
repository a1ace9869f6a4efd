"""The semantics, in plain PyTorch: every backend is tested against these.

They compute in float64 when given float64 inputs (tests always do that) and
in float32 otherwise, return results in x's dtype, and are differentiable
with torch.autograd. Shapes: B batch, D channels, L length, W width,
S state length, T packed tokens.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "causal_conv1d_ref",
    "causal_conv1d_update_ref",
    "causal_conv1d_varlen_states_ref",
    "causal_conv1d_packed_fwd_ref",
]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _act(y: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    return F.silu(y) if activation in ("silu", "swish") else y


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    return_final_states: bool = False,
    final_states_out: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
):
    """Causal depthwise conv1d: x (B, D, L), weight (D, W) -> out (B, D, L).

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * xin[b, d, t - (W-1) + k]),
    where xin at positions < 0 is initial_states (B, D, W-1) (last column is
    position -1) or zero. With seq_idx (B, L) int32, position p feeds token t
    only if seq_idx[p] == seq_idx[t]; initial states feed only tokens of the
    first segment (id == seq_idx[b, 0]); tokens with id < 0 output 0.
    final_states (B, D, W-1) are the last W-1 inputs of the stream (initial
    states included), restricted to the last token's segment with seq_idx.
    """
    B, D, L = x.shape
    W = weight.shape[1]
    ct = _compute_dtype(x)
    xc, wc = x.to(ct), weight.to(ct)
    init = (
        initial_states.to(ct)
        if initial_states is not None
        else torch.zeros(B, D, W - 1, dtype=ct, device=x.device)
    )
    xin = torch.cat([init, xc], dim=-1)  # (B, D, W-1+L); xin[..., W-1+p] is position p
    if L == 0:
        seq_idx = None  # no tokens: nothing to separate
    if seq_idx is not None:
        seq = seq_idx.long()
        first = seq[:, :1]
        # id of each input position, as seen from token t: positions < 0
        # carry the first segment's id so they match exactly its tokens.
        ids_in = torch.cat([first.expand(B, W - 1), seq], dim=1)  # (B, W-1+L)
    out = torch.zeros(B, D, L, dtype=ct, device=x.device)
    if bias is not None:
        out = out + bias.to(ct)[None, :, None]
    for k in range(W):
        window = xin[..., k : k + L]  # position t - (W-1) + k
        term = wc[None, :, k, None] * window
        if seq_idx is not None:
            # where, not a product with the mask: NaN/Inf in another
            # segment must not leak in (NaN * 0 is NaN)
            same = (ids_in[:, k : k + L] == seq)[:, None, :]
            term = torch.where(same, term, 0.0)
        out = out + term
    if seq_idx is not None:
        # padding tokens: zeroed before the activation (silu(0) == 0) so that
        # no NaN from their inputs reaches a gradient either
        out = torch.where((seq >= 0)[:, None, :], out, 0.0)
    out = _act(out, activation)
    out = out.to(x.dtype)
    if not return_final_states:
        return out
    final = xin[..., L:]  # the last W-1 positions, L-(W-1) .. L-1
    if seq_idx is not None and W > 1:
        final = torch.where((ids_in[:, L:] == seq[:, -1:])[:, None, :], final, 0.0)
    final = final.to(x.dtype)
    if final_states_out is not None:
        final_states_out.copy_(final)
        final = final_states_out
    return out, final


def causal_conv1d_update_ref(
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
    """Decode step: x (B, D) or (B, D, L); conv_state (B or N, D, S), updated in place.

    Without cache_seqlens the state holds the last S inputs in order (oldest
    first); with it, it is a circular buffer whose next write position is
    cache_seqlens[b] % S. conv_state_indices (B,) picks pool rows; a row
    with index < 0 outputs 0 and leaves the pool untouched.

    The keyword-only arguments are the serving engines' decode step
    (_serving_update_ref); none of them combines with cache_seqlens.
    """
    if (
        num_accepted_tokens is not None
        or query_start_loc is not None
        or retrieve_parent_token is not None
        or intermediate_conv_window is not None
        or initial_state_idx is not None
        or block_idx_last_scheduled_token is not None
        or pad_slot_id != -1
    ):
        if cache_seqlens is not None:
            raise ValueError("causal_conv1d_update_ref: cache_seqlens does not combine with "
                             "the serving arguments")
        return _serving_update_ref(
            x, conv_state, weight, bias, activation, conv_state_indices, num_accepted_tokens,
            query_start_loc, channels_first, retrieve_parent_token, intermediate_conv_window,
            intermediate_state_indices, initial_state_idx, block_idx_last_scheduled_token,
            pad_slot_id,
        )
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    B, D, L = x3.shape
    W = weight.shape[1]
    S = conv_state.shape[-1]
    if cache_seqlens is not None and S == 0:
        raise ValueError("causal_conv1d_update_ref: cache_seqlens needs state_len >= 1")
    out = torch.zeros_like(x3)
    for b in range(B):
        row = int(conv_state_indices[b]) if conv_state_indices is not None else b
        if row < 0:
            continue
        state = conv_state[row]  # (D, S)
        if cache_seqlens is None:
            history = state  # oldest .. newest
        else:
            start = int(cache_seqlens[b]) % S  # oldest element in circular order
            order = (torch.arange(S, device=x.device) + start) % S
            history = state[:, order]
        stream = torch.cat([history, x3[b]], dim=-1)  # (D, S + L)
        init = stream[:, S - (W - 1) : S] if W > 1 else stream[:, :0]
        y = causal_conv1d_ref(
            x3[b : b + 1], weight, bias, initial_states=init[None], activation=activation
        )
        out[b] = y[0]
        if cache_seqlens is None:
            state.copy_(stream[:, stream.shape[-1] - S :])  # [-S:] is everything for S = 0
        else:
            pos = (int(cache_seqlens[b]) + torch.arange(L, device=x.device)) % S
            # later tokens overwrite earlier ones when L > S
            for i in range(L):
                state[:, pos[i]] = x3[b, :, i]
    return out.squeeze(-1) if squeeze else out


def _serving_update_ref(
    x, conv_state, weight, bias, activation, conv_state_indices, num_accepted_tokens,
    query_start_loc, channels_first, retrieve_parent_token, intermediate_conv_window,
    intermediate_state_indices, initial_state_idx, block_idx_last_scheduled_token, pad_slot_id,
):
    """The serving engines' decode step, one sequence at a time.

    Tokens: x (B, D) / (B, D, L), or packed (T, D) (channels_first: (D, T))
    with query_start_loc (B+1,): sequence b is tokens [qsl[b], qsl[b+1]);
    tokens outside every sequence output 0.
    Rows: conv_state_indices (B,) (default b), or a (B, blocks) table read
    at column initial_state_idx[b] and written at column
    block_idx_last_scheduled_token[b]; a row equal to pad_slot_id or < 0
    marks a padding sequence (output 0, nothing written).
    History: the read row's S columns or, with num_accepted_tokens n, its
    first n + W - 2 (up to the last accepted token of the previous step).
    Token j convolves the W inputs ending at it: the tokens before it, or
    with retrieve_parent_token (B, >= L) its ancestors (parent of j >= 1 in
    [0, j)), then the history's last columns.
    Written row: the last S inputs of history + tokens or, with n, the W - 2
    inputs before the history's end and the tokens, from column 0 (later
    columns keep their values). With intermediate_conv_window (N2, >= L, D,
    W-1) the pool is not written; instead window [row, j] receives token j's
    last W - 1 inputs (oldest first), row = intermediate_state_indices[b]
    (default b; < 0: none).
    """
    W = weight.shape[1]
    ct = _compute_dtype(x)
    if query_start_loc is not None:
        tokens_first = x.t() if channels_first else x  # (T, D)
        bounds = [(int(query_start_loc[b]), int(query_start_loc[b + 1]))
                  for b in range(query_start_loc.shape[0] - 1)]
        seqs = [tokens_first[lo:hi].t() for lo, hi in bounds]  # (D, len) each
        out = torch.zeros_like(x)
        out_first = out.t() if channels_first else out
    else:
        x3 = x.unsqueeze(-1) if x.dim() == 2 else x
        seqs = [x3[b] for b in range(x3.shape[0])]
        out = torch.zeros_like(x3)
    w_newest_first = weight.to(ct).flip(1)  # (D, W): column i is tap W-1-i
    for b, seq in enumerate(seqs):
        if conv_state_indices is None:
            read = write = b
        elif conv_state_indices.dim() == 2:
            read = int(conv_state_indices[b, int(initial_state_idx[b])])
            write = int(conv_state_indices[b, int(block_idx_last_scheduled_token[b])])
        else:
            read = write = int(conv_state_indices[b])
        length = seq.shape[1]
        if read == pad_slot_id or read < 0 or write == pad_slot_id or write < 0 or length == 0:
            continue
        state = conv_state[read].to(ct)
        if num_accepted_tokens is not None:
            n = int(num_accepted_tokens[b])
            history, shift, count = state[:, : n + W - 2], n, W - 2 + length
        else:
            history, shift, count = state, length, state.shape[1]
        stream = torch.cat([history, seq.to(ct)], dim=1)
        H = history.shape[1]
        ys = []
        for j in range(length):
            chain, at = [H + j], j  # stream positions, newest first
            for _ in range(W - 1):
                if at > 0 and retrieve_parent_token is not None:
                    at = int(retrieve_parent_token[b, at])
                else:
                    at -= 1
                chain.append(H + at)
            inputs = stream[:, chain]  # (D, W), newest first
            y = (inputs * w_newest_first).sum(dim=1)
            if bias is not None:
                y = y + bias.to(ct)
            ys.append(_act(y, activation))
            if intermediate_conv_window is not None:
                row = int(intermediate_state_indices[b]) if intermediate_state_indices is not None else b
                if row >= 0:
                    intermediate_conv_window[row, j].copy_(inputs[:, : W - 1].flip(1))
        y = torch.stack(ys, dim=1).to(x.dtype)  # (D, len)
        if query_start_loc is not None:
            lo, hi = bounds[b]
            out_first[lo:hi] = y.t()
        else:
            out[b] = y
        if intermediate_conv_window is None:
            conv_state[write, :, :count] = stream[:, shift : shift + count].to(conv_state.dtype)
    if query_start_loc is None and x.dim() == 2:
        return out.squeeze(-1)
    return out


def causal_conv1d_varlen_states_ref(
    x: torch.Tensor, cu_seqlens: torch.Tensor, state_len: int
) -> torch.Tensor:
    """x (T, D) packed, cu_seqlens (B+1,) -> (B, D, state_len): each sequence's
    last state_len tokens, right-aligned, zero-filled where it is shorter."""
    B = cu_seqlens.shape[0] - 1
    D = x.shape[1]
    states = torch.zeros(B, D, state_len, dtype=x.dtype, device=x.device)
    for b in range(B):
        start, end = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
        n = min(end - start, state_len)
        if n > 0:
            states[b, :, state_len - n :] = x[end - n : end].t()
    return states


def causal_conv1d_packed_fwd_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    cu_seqlens: torch.Tensor,
    conv_states: torch.Tensor,
    cache_indices: Optional[torch.Tensor] = None,
    has_initial_state: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    pad_slot_id: int = -1,
    *,
    initial_state_idx: Optional[torch.Tensor] = None,
    block_idx_first_scheduled_token: Optional[torch.Tensor] = None,
    block_idx_last_scheduled_token: Optional[torch.Tensor] = None,
    num_computed_tokens: Optional[torch.Tensor] = None,
    block_size: int = 0,
) -> torch.Tensor:
    """Packed prefill with a state pool. x (T, D) packed tokens; conv_states
    (N, D, S) updated in place. Sequence b uses pool row cache_indices[b]
    (default b): when has_initial_state[b] its initial state is the row's last
    W-1 columns, and afterwards the row holds the last S inputs of the state
    followed by the sequence. Rows equal to pad_slot_id (or < 0) are skipped
    (output 0, pool untouched). Returns out (T, D).

    Prefix caching: cache_indices is a (B, blocks) table; the initial state
    comes from column initial_state_idx[b], the final state goes to column
    block_idx_last_scheduled_token[b], and the state after each block of
    block_size tokens completed inside the call (block boundaries counted
    from the sequence's start, num_computed_tokens[b] earlier tokens
    included) goes to the columns from block_idx_first_scheduled_token[b]
    on. Sequences of length 0 are then skipped."""
    T, D = x.shape
    W = weight.shape[1]
    S = conv_states.shape[-1]
    out = torch.zeros_like(x)
    for b in range(cu_seqlens.shape[0] - 1):
        start, end = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
        if block_size:
            table = cache_indices[b]
            row = int(table[int(initial_state_idx[b])])
            final_row = int(table[int(block_idx_last_scheduled_token[b])])
            if row == pad_slot_id or row < 0 or end == start:
                continue
        else:
            row = final_row = int(cache_indices[b]) if cache_indices is not None else b
        if row == pad_slot_id or row < 0:
            continue
        has_init = bool(has_initial_state[b]) if has_initial_state is not None else False
        state = conv_states[row] if has_init else torch.zeros_like(conv_states[row])
        seq = x[start:end].t()[None]  # (1, D, len)
        init = state[None, :, S - (W - 1) :] if W > 1 else state[None, :, :0]
        y = causal_conv1d_ref(seq, weight, bias, initial_states=init, activation=activation)
        out[start:end] = y[0].t()
        stream = torch.cat([state, seq[0]], dim=-1)  # (D, S + len)
        if block_size:
            done = int(num_computed_tokens[b])
            first = int(block_idx_first_scheduled_token[b])
            ends = range(block_size - done % block_size, end - start, block_size)
            states = [stream[:, i : i + S].clone() for i in ends]  # the S inputs before token i
            for k, state_k in enumerate(states):
                block_row = int(table[first + k])
                if block_row != pad_slot_id and block_row >= 0:
                    conv_states[block_row].copy_(state_k)
        conv_states[final_row].copy_(stream[:, stream.shape[-1] - S :])
    return out
