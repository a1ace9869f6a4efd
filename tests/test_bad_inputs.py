"""Bad inputs to every public function (and the native operators behind them).

Each case starts from a valid call, breaks one thing, and expects the check
layer (causal_conv1d/checks.cpp) to refuse it with a Python exception of the
right type whose message names the argument and what was expected. A refused
call must not have written anything: every tensor argument (states, pools,
outputs, and the inputs too) is compared bitwise with a snapshot taken
before the call.

Valid zero-size inputs are checked at the end: they return empty results of
the right shape and agree with the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

I32 = torch.int32
B_, D_, L_, W_ = 2, 8, 12, 4  # the valid baseline's sizes


# ---------------------------------------------------------------------------
# valid baselines (fresh random values, never zeros)


def fn_args() -> dict:
    return dict(
        x=torch.randn(B_, D_, L_),
        weight=torch.randn(D_, W_),
        bias=torch.randn(D_),
        seq_idx=torch.tensor([[0] * 5 + [1] * 7, [-1, -1] + [3] * 10], dtype=I32),
        initial_states=torch.randn(B_, D_, W_ - 1),
        return_final_states=True,
        final_states_out=torch.randn(B_, D_, W_ - 1),
        activation="silu",
    )


def fwd_out_args() -> dict:
    """The native out= operator: ops.fwd_out(x, weight, bias, seq_idx,
    initial_states, out, final_states_out, silu)."""
    a = fn_args()
    return dict(
        x=a["x"], weight=a["weight"], bias=a["bias"], seq_idx=a["seq_idx"],
        initial_states=a["initial_states"], out=torch.randn(B_, D_, L_),
        final_states_out=a["final_states_out"], silu=True,
    )


def bwd_args() -> dict:
    """The native backward: ops.bwd(x, weight, bias, seq_idx, initial_states,
    dout, dfinal_states, silu, deterministic)."""
    a = fn_args()
    return dict(
        x=a["x"], weight=a["weight"], bias=a["bias"], seq_idx=a["seq_idx"],
        initial_states=a["initial_states"], dout=torch.randn(B_, D_, L_),
        dfinal_states=torch.randn(B_, D_, W_ - 1), silu=True, deterministic=False,
    )


N_POOL, S_ = 5, 4


def update_args() -> dict:
    return dict(
        x=torch.randn(3, D_, 2),
        conv_state=torch.randn(N_POOL, D_, S_),
        weight=torch.randn(D_, W_),
        bias=torch.randn(D_),
        activation="silu",
        cache_seqlens=torch.tensor([0, 7, 3], dtype=I32),
        conv_state_indices=torch.tensor([4, 0, 2], dtype=I32),
    )


def varlen_args() -> dict:
    return dict(x=torch.randn(10, D_), cu_seqlens=torch.tensor([0, 3, 3, 7, 10], dtype=I32),
                state_len=3)


def packed_args() -> dict:
    return dict(
        x=torch.randn(10, D_),
        weight=torch.randn(D_, W_),
        bias=torch.randn(D_),
        cu_seqlens=torch.tensor([0, 3, 3, 7, 10], dtype=I32),
        conv_states=torch.randn(6, D_, 5),
        cache_indices=torch.tensor([5, 1, -1, 3], dtype=I32),
        has_initial_state=torch.tensor([True, False, True, False]),
        activation="silu",
        pad_slot_id=-1,
    )


BASE = {
    "fn": fn_args,
    "fwd_out": fwd_out_args,
    "bwd": bwd_args,
    "update": update_args,
    "varlen": varlen_args,
    "packed": packed_args,
}


def call(cc, target: str, a: dict):
    if target == "fn":
        return cc.causal_conv1d_fn(**a)
    if target == "fwd_out":
        return cc.ops.fwd_out(*a.values())
    if target == "bwd":
        return cc.ops.bwd(*a.values())
    if target == "update":
        return cc.causal_conv1d_update(**a)
    if target == "varlen":
        return cc.causal_conv1d_varlen_states(**a)
    if target == "packed":
        return cc.causal_conv1d_packed_fwd(**a)
    raise AssertionError(target)


# ---------------------------------------------------------------------------
# the table


@dataclass
class Case:
    target: str  # key of BASE
    name: str
    mutate: Callable[[dict], None]
    exc: type
    match: str  # regex: the argument's name and the expectation

    @property
    def id(self) -> str:
        return f"{self.target}-{self.name}"


def put(**changes) -> Callable[[dict], None]:
    """Mutation: replace arguments; a callable value receives the baseline."""

    def f(a: dict) -> None:
        new = {k: (v(a) if callable(v) else v) for k, v in changes.items()}
        a.update(new)

    return f


def meta(key: str) -> Callable[[dict], None]:
    return put(**{key: lambda a: a[key].to("meta")})


def no_states(a: dict) -> None:
    """Drop the width-dependent optional tensors of causal_conv1d_fn."""
    a.update(initial_states=None, final_states_out=None, return_final_states=False)


def seq(f, *more):
    def g(a):
        f(a)
        for m in more:
            m(a)

    return g


VE, TE = ValueError, TypeError


def _inference_clone(t: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return t.clone()

CASES = [
    # ---- causal_conv1d_fn: ranks and shapes --------------------------------
    Case("fn", "x_2d", put(x=lambda a: a["x"][0]), VE, r"x must be 3-D \(batch, dim, seqlen\)"),
    Case("fn", "x_4d", put(x=lambda a: a["x"][None]), VE, r"x must be 3-D"),
    Case("fn", "weight_1d", put(weight=lambda a: a["weight"][:, 0]), VE, r"weight must be 2-D \(dim, width\)"),
    Case("fn", "weight_3d", put(weight=lambda a: a["weight"][None]), VE, r"weight must be 2-D"),
    Case("fn", "weight_dim_mismatch", put(weight=torch.randn(D_ + 1, W_)), VE,
         r"weight must have shape \[8, width\]"),
    Case("fn", "width_0", seq(no_states, put(weight=torch.randn(D_, 0))), VE,
         r"weight width .* must be in \[1, 32\], got 0"),
    Case("fn", "width_33", seq(no_states, put(weight=torch.randn(D_, 33))), VE,
         r"weight width .* must be in \[1, 32\], got 33"),
    Case("fn", "bias_shape", put(bias=torch.randn(D_ + 1)), VE, r"bias must have shape \[8\]"),
    Case("fn", "bias_2d", put(bias=lambda a: a["bias"][:, None]), VE, r"bias must have shape \[8\]"),
    Case("fn", "seq_idx_shape", put(seq_idx=torch.zeros(B_, L_ + 1, dtype=I32)), VE,
         r"seq_idx must have shape \[2, 12\]"),
    Case("fn", "seq_idx_1d", put(seq_idx=lambda a: a["seq_idx"][0]), VE,
         r"seq_idx must have shape \[2, 12\]"),
    Case("fn", "initial_states_shape", put(initial_states=torch.randn(B_, D_, W_)), VE,
         r"initial_states must have shape \[2, 8, 3\]"),
    Case("fn", "final_states_out_shape", put(final_states_out=torch.randn(B_, D_, W_)), VE,
         r"final_states_out must have shape \[2, 8, 3\]"),
    # ---- causal_conv1d_fn: dtypes -------------------------------------------
    Case("fn", "x_int32", put(x=lambda a: a["x"].to(I32)), TE, r"x must be float32, float16 or bfloat16"),
    Case("fn", "x_bool", put(x=lambda a: a["x"] > 0), TE, r"x must be float32"),
    Case("fn", "x_complex", put(x=lambda a: a["x"].to(torch.complex64)), TE, r"x must be float32"),
    Case("fn", "weight_int64", put(weight=lambda a: a["weight"].long()), TE, r"weight must be float32"),
    Case("fn", "x_fp64_weight_fp32", put(x=lambda a: a["x"].double()), TE,
         r"float64 x needs float64 weight .*got x torch\.float64 and weight torch\.float32"),
    Case("fn", "x_fp32_weight_fp64",
         put(weight=lambda a: a["weight"].double(), bias=lambda a: a["bias"].double()), TE,
         r"float64 x needs float64 weight"),
    Case("fn", "bias_dtype", put(bias=lambda a: a["bias"].half()), TE,
         r"bias must be torch\.float32 \(weight's dtype\), got torch\.float16"),
    Case("fn", "seq_idx_int64", put(seq_idx=lambda a: a["seq_idx"].long()), TE,
         r"seq_idx must be torch\.int32, got torch\.int64"),
    Case("fn", "seq_idx_float", put(seq_idx=lambda a: a["seq_idx"].float()), TE, r"seq_idx must be torch\.int32"),
    Case("fn", "initial_states_dtype", put(initial_states=lambda a: a["initial_states"].bfloat16()), TE,
         r"initial_states must be torch\.float32 \(x's dtype\)"),
    Case("fn", "final_states_out_dtype", put(final_states_out=lambda a: a["final_states_out"].half()),
         TE, r"final_states_out must be torch\.float32"),
    Case("fn", "activation_unknown", put(activation="relu"), VE,
         r"activation must be None, 'silu' or 'swish', got 'relu'"),
    Case("fn", "activation_not_str", put(activation=True), VE, r"activation must be None"),
    # ---- causal_conv1d_fn: memory ---------------------------------------------
    Case("fn", "final_states_out_aliases_x", put(final_states_out=lambda a: a["x"][:, :, : W_ - 1]), VE,
         r"final_states_out must not share memory with x"),
    Case("fn", "final_states_out_aliases_initial_states",
         put(final_states_out=lambda a: a["initial_states"]), VE,
         r"final_states_out must not share memory with initial_states"),
    Case("fn", "final_states_out_expanded",
         put(final_states_out=torch.randn(1, D_, W_ - 1).expand(B_, D_, W_ - 1)), VE,
         r"final_states_out has overlapping elements"),
    # ---- causal_conv1d_fn: devices (meta is a second device on any machine) ---
    Case("fn", "weight_on_meta", meta("weight"), VE, r"weight must be on cpu like x, got meta"),
    Case("fn", "bias_on_meta", meta("bias"), VE, r"bias must be on cpu like x"),
    Case("fn", "seq_idx_on_meta", meta("seq_idx"), VE, r"seq_idx must be on cpu like x"),
    Case("fn", "initial_states_on_meta", meta("initial_states"), VE, r"initial_states must be on cpu like x"),
    Case("fn", "final_states_out_on_meta", meta("final_states_out"), VE,
         r"final_states_out must be on cpu like x"),
    Case("fn", "x_on_meta", meta("x"), VE, r"weight must be on meta like x, got cpu"),
    # ---- native out= operator -------------------------------------------------
    Case("fwd_out", "out_shape", put(out=torch.randn(B_, D_, L_ + 1)), VE,
         r"out must have shape \[2, 8, 12\]"),
    Case("fwd_out", "out_dtype", put(out=torch.randn(B_, D_, L_).half()), TE,
         r"out must be torch\.float32 \(x's dtype\)"),
    Case("fwd_out", "out_is_x", put(out=lambda a: a["x"]), VE, r"out must not share memory with x"),
    Case("fwd_out", "out_aliases_seq_idx", put(seq_idx=lambda a: a["out"][0, :B_].view(I32)), VE,
         r"out must not share memory with seq_idx"),
    Case("fwd_out", "out_expanded", put(out=torch.randn(B_, D_, 1).expand(B_, D_, L_)), VE,
         r"out has overlapping elements"),
    Case("fwd_out", "final_states_out_aliases_out", put(final_states_out=lambda a: a["out"][:, :, : W_ - 1]),
         VE, r"final_states_out must not share memory with out"),
    Case("fwd_out", "out_on_meta", meta("out"), VE, r"out must be on cpu like x"),
    # ---- memory shared through a second storage, self-overlapping targets ----
    Case("fwd_out", "out_aliases_x_through_numpy", put(out=lambda a: torch.from_numpy(a["x"].numpy())), VE,
         r"out must not share memory with x"),
    Case("fwd_out", "out_as_strided_overlapping",
         put(out=torch.randn(B_ * D_ * L_).as_strided((B_, D_, L_), (D_ * L_, 1, 1))), VE,
         r"out has overlapping elements"),
    Case("fn", "final_states_out_aliases_initial_states_through_numpy",
         put(final_states_out=lambda a: torch.from_numpy(a["initial_states"].numpy())), VE,
         r"final_states_out must not share memory with initial_states"),
    Case("update", "conv_state_as_strided_overlapping",
         put(conv_state=torch.randn(N_POOL + D_ * S_).as_strided((N_POOL, D_, S_), (1, S_, 1))), VE,
         r"conv_state has overlapping elements"),
    Case("update", "conv_state_aliases_x_through_dlpack",
         put(x=lambda a: torch.from_dlpack(a["conv_state"])[:3, :, :2]), VE,
         r"conv_state must not share memory with x"),
    Case("packed", "conv_states_aliases_has_initial_state_through_numpy",
         put(has_initial_state=lambda a: torch.from_numpy(a["conv_states"].numpy()).view(torch.bool)[0, 0, :4]),
         VE, r"conv_states must not share memory with has_initial_state"),
    # ---- Python-level argument types ---------------------------------------------
    Case("fn", "activation_as_seq_idx", put(seq_idx="silu", activation=None), TE,
         r"activation must be passed by keyword"),
    Case("fn", "bias_float", put(bias=0.5), TE, r"bias must be a torch\.Tensor or None, got float"),
    Case("fn", "x_list", put(x=lambda a: a["x"].tolist()), TE, r"x must be a torch\.Tensor, got list"),
    Case("fn", "return_final_states_str", put(return_final_states="yes"), TE,
         r"return_final_states must be a bool, got str"),
    Case("update", "conv_state_indices_list", put(conv_state_indices=[4, 0, 2]), TE,
         r"conv_state_indices must be a torch\.Tensor or None, got list"),
    Case("varlen", "state_len_float", put(state_len=3.0), TE, r"state_len must be an int, got float"),
    Case("varlen", "cu_seqlens_list", put(cu_seqlens=[0, 3, 3, 7, 10]), TE,
         r"cu_seqlens must be a torch\.Tensor, got list"),
    Case("packed", "pad_slot_id_past_int64", put(pad_slot_id=2**63), VE, r"pad_slot_id must fit in int64"),
    Case("packed", "pad_slot_id_float", put(pad_slot_id=-1.0), TE, r"pad_slot_id must be an int, got float"),
    Case("packed", "weight_numpy", put(weight=lambda a: a["weight"].numpy()), TE,
         r"weight must be a torch\.Tensor, got ndarray"),
    # ---- written tensors autograd refuses to write ----------------------------------
    Case("fn", "final_states_out_leaf_requires_grad",
         put(final_states_out=lambda a: a["final_states_out"].requires_grad_()), VE,
         r"final_states_out is a leaf tensor that requires grad"),
    Case("fwd_out", "out_leaf_requires_grad", put(out=lambda a: a["out"].requires_grad_()), VE,
         r"out is a leaf tensor that requires grad"),
    Case("update", "conv_state_leaf_requires_grad", put(conv_state=lambda a: a["conv_state"].requires_grad_()),
         VE, r"conv_state is a leaf tensor that requires grad"),
    Case("packed", "conv_states_inference_tensor", put(conv_states=lambda a: _inference_clone(a["conv_states"])),
         VE, r"conv_states is an inference tensor"),
    # ---- native backward ----------------------------------------------------
    Case("bwd", "dout_shape", put(dout=torch.randn(B_, D_, L_ - 1)), VE, r"dout must have shape \[2, 8, 12\]"),
    Case("bwd", "dout_dtype", put(dout=lambda a: a["dout"].double()), TE,
         r"dout must be torch\.float32 \(x's dtype\)"),
    Case("bwd", "dfinal_states_shape", put(dfinal_states=torch.randn(B_, D_, W_)), VE,
         r"dfinal_states must have shape \[2, 8, 3\]"),
    Case("bwd", "dfinal_states_dtype", put(dfinal_states=lambda a: a["dfinal_states"].half()), TE,
         r"dfinal_states must be torch\.float32"),
    Case("bwd", "seq_idx_int64", put(seq_idx=lambda a: a["seq_idx"].long()), TE, r"seq_idx must be torch\.int32"),
    Case("bwd", "dout_on_meta", meta("dout"), VE, r"dout must be on cpu like x"),
    # ---- causal_conv1d_update ---------------------------------------------------
    Case("update", "x_1d", put(x=torch.randn(D_)), VE, r"x must be 2-D \(batch, dim\) or 3-D \(batch, dim, seqlen\)"),
    Case("update", "x_4d", put(x=lambda a: a["x"][None]), VE, r"x must be 2-D .* or 3-D"),
    Case("update", "weight_1d", put(weight=lambda a: a["weight"][:, 0]), VE, r"weight must be 2-D"),
    Case("update", "weight_dim_mismatch", put(weight=torch.randn(D_ - 1, W_)), VE, r"weight must have shape \[8, width\]"),
    Case("update", "width_0", put(weight=torch.randn(D_, 0)), VE, r"weight width .* must be in \[1, 32\]"),
    Case("update", "width_33", put(weight=torch.randn(D_, 33), conv_state=torch.randn(N_POOL, D_, 40)), VE,
         r"weight width .* must be in \[1, 32\], got 33"),
    Case("update", "conv_state_2d", put(conv_state=lambda a: a["conv_state"][0]), VE,
         r"conv_state must be 3-D \(batch or pool size, dim, state_len\)"),
    Case("update", "conv_state_dim_mismatch", put(conv_state=torch.randn(N_POOL, D_ + 1, S_)), VE,
         r"conv_state must have dim 8"),
    Case("update", "conv_state_dtype", put(conv_state=lambda a: a["conv_state"].half()), TE,
         r"conv_state must be torch\.float32 \(x's dtype\)"),
    Case("update", "state_len_lt_width_minus_1", put(conv_state=torch.randn(N_POOL, D_, W_ - 2)), VE,
         r"the state_len of conv_state \(last dimension\) must be >= width - 1 = 3, got 2"),
    Case("update", "pool_without_indices", put(conv_state_indices=None), VE,
         r"conv_state must have batch 3 rows .*conv_state_indices"),
    Case("update", "x_fp64_weight_fp32", put(x=lambda a: a["x"].double(), conv_state=lambda a: a["conv_state"].double()),
         TE, r"float64 x needs float64 weight"),
    Case("update", "x_int", put(x=lambda a: a["x"].to(torch.int16)), TE, r"x must be float32"),
    Case("update", "bias_dtype", put(bias=lambda a: a["bias"].bfloat16()), TE, r"bias must be torch\.float32"),
    Case("update", "bias_shape", put(bias=torch.randn(1)), VE, r"bias must have shape \[8\]"),
    Case("update", "cache_seqlens_int64", put(cache_seqlens=lambda a: a["cache_seqlens"].long()), TE,
         r"cache_seqlens must be torch\.int32, got torch\.int64"),
    Case("update", "cache_seqlens_shape", put(cache_seqlens=torch.zeros(4, dtype=I32)), VE,
         r"cache_seqlens must have shape \[3\]"),
    Case("update", "cache_seqlens_negative", put(cache_seqlens=torch.tensor([0, -2, 3], dtype=I32)), VE,
         r"cache_seqlens must be >= 0, got cache_seqlens\[1\] = -2"),
    Case("update", "cache_seqlens_with_empty_state",
         put(weight=torch.randn(D_, 1), conv_state=torch.randn(N_POOL, D_, 0)), VE,
         r"cache_seqlens needs conv_state's state_len >= 1"),
    Case("update", "conv_state_indices_int64", put(conv_state_indices=lambda a: a["conv_state_indices"].long()),
         TE, r"conv_state_indices must be torch\.int32, got torch\.int64"),
    Case("update", "conv_state_indices_shape", put(conv_state_indices=torch.tensor([0, 1], dtype=I32)), VE,
         r"conv_state_indices must have shape \[3\]"),
    Case("update", "conv_state_indices_out_of_range", put(conv_state_indices=torch.tensor([4, 5, 2], dtype=I32)),
         VE, r"conv_state_indices\[1\] = 5 is out of range for a state pool of 5 rows"),
    Case("update", "conv_state_indices_repeated", put(conv_state_indices=torch.tensor([4, 0, 4], dtype=I32)),
         VE, r"conv_state_indices uses pool row 4 twice"),
    Case("update", "conv_state_expanded", put(conv_state=torch.randn(1, D_, S_).expand(N_POOL, D_, S_)), VE,
         r"conv_state has overlapping elements"),
    Case("update", "conv_state_aliases_x", put(x=lambda a: a["conv_state"][:3, :, :2]), VE,
         r"conv_state must not share memory with x"),
    Case("update", "conv_state_aliases_bias", put(bias=lambda a: a["conv_state"][1, :, 0]), VE,
         r"conv_state must not share memory with bias"),
    Case("update", "conv_state_aliases_cache_seqlens",
         put(cache_seqlens=lambda a: a["conv_state"][0, 0, :3].abs_().view(I32)), VE,
         r"conv_state must not share memory with cache_seqlens"),
    Case("update", "conv_state_on_meta", meta("conv_state"), VE, r"conv_state must be on cpu like x"),
    Case("update", "cache_seqlens_on_meta", meta("cache_seqlens"), VE, r"cache_seqlens must be on cpu like x"),
    Case("update", "conv_state_indices_on_meta", meta("conv_state_indices"), VE,
         r"conv_state_indices must be on cpu like x"),
    Case("update", "activation_unknown", put(activation="gelu"), VE, r"activation must be None, 'silu' or 'swish'"),
    # ---- causal_conv1d_varlen_states ----------------------------------------
    Case("varlen", "x_3d", put(x=lambda a: a["x"][None]), VE, r"x must be 2-D \(total_tokens, dim\)"),
    Case("varlen", "x_int", put(x=lambda a: a["x"].to(I32)), TE, r"x must be float32"),
    Case("varlen", "cu_seqlens_int16", put(cu_seqlens=lambda a: a["cu_seqlens"].short()), TE,
         r"cu_seqlens must be torch\.int32 or torch\.int64, got torch\.int16"),
    Case("varlen", "cu_seqlens_int64_decreasing",
         put(cu_seqlens=torch.tensor([0, 3, 2, 7, 10], dtype=torch.int64)), VE,
         r"cu_seqlens must be non-decreasing, but cu_seqlens\[2\] = 2 < cu_seqlens\[1\] = 3"),
    Case("varlen", "cu_seqlens_int64_past_end",
         put(cu_seqlens=torch.tensor([0, 3, 3, 7, 2**40], dtype=torch.int64)), VE,
         r"cu_seqlens\[-1\] = 1099511627776 is past the end of x's 10 tokens"),
    Case("varlen", "cu_seqlens_2d", put(cu_seqlens=lambda a: a["cu_seqlens"][None]), VE,
         r"cu_seqlens must be 1-D \(batch \+ 1,\)"),
    Case("varlen", "cu_seqlens_empty", put(cu_seqlens=torch.zeros(0, dtype=I32)), VE,
         r"cu_seqlens must be 1-D .*at least one entry"),
    Case("varlen", "cu_seqlens_decreasing", put(cu_seqlens=torch.tensor([0, 3, 2, 7, 10], dtype=I32)), VE,
         r"cu_seqlens must be non-decreasing, but cu_seqlens\[2\] = 2 < cu_seqlens\[1\] = 3"),
    Case("varlen", "cu_seqlens_past_end", put(cu_seqlens=torch.tensor([0, 3, 3, 7, 11], dtype=I32)), VE,
         r"cu_seqlens\[-1\] = 11 is past the end of x's 10 tokens"),
    Case("varlen", "cu_seqlens_negative", put(cu_seqlens=torch.tensor([-1, 3, 3, 7, 10], dtype=I32)), VE,
         r"cu_seqlens\[0\] must be >= 0"),
    Case("varlen", "state_len_negative", put(state_len=-1), VE, r"state_len must be >= 0, got -1"),
    Case("varlen", "cu_seqlens_on_meta", meta("cu_seqlens"), VE, r"cu_seqlens must be on cpu like x"),
    # ---- causal_conv1d_packed_fwd ---------------------------------------------
    Case("packed", "x_3d", put(x=lambda a: a["x"][None]), VE, r"x must be 2-D"),
    Case("packed", "x_1d", put(x=lambda a: a["x"][0]), VE, r"x must be 2-D"),
    Case("packed", "weight_dim_mismatch", put(weight=torch.randn(D_ + 2, W_)), VE,
         r"weight must have shape \[8, width\]"),
    Case("packed", "width_0", put(weight=torch.randn(D_, 0)), VE, r"weight width .* must be in \[1, 32\]"),
    Case("packed", "x_fp64_weight_fp32", put(x=lambda a: a["x"].double(), conv_states=lambda a: a["conv_states"].double()),
         TE, r"float64 x needs float64 weight"),
    Case("packed", "bias_shape", put(bias=torch.randn(D_, 1)), VE, r"bias must have shape \[8\]"),
    Case("packed", "cu_seqlens_float", put(cu_seqlens=lambda a: a["cu_seqlens"].float()), TE,
         r"cu_seqlens must be torch\.int32 or torch\.int64"),
    Case("packed", "cu_seqlens_decreasing", put(cu_seqlens=torch.tensor([0, 3, 3, 9, 7], dtype=I32)), VE,
         r"cu_seqlens must be non-decreasing"),
    Case("packed", "cu_seqlens_past_end", put(cu_seqlens=torch.tensor([0, 3, 3, 7, 12], dtype=I32)), VE,
         r"cu_seqlens\[-1\] = 12 is past the end of x's 10 tokens"),
    Case("packed", "conv_states_2d", put(conv_states=lambda a: a["conv_states"][0]), VE,
         r"conv_states must be 3-D \(pool size, dim"),
    Case("packed", "conv_states_dim_mismatch", put(conv_states=torch.randn(6, D_ - 1, 5)), VE,
         r"conv_states must have dim 8 \(x's dim\) in dimension 1"),
    Case("packed", "conv_states_dtype", put(conv_states=lambda a: a["conv_states"].bfloat16()), TE,
         r"conv_states must be torch\.float32 \(x's dtype\)"),
    Case("packed", "state_len_lt_width_minus_1", put(conv_states=torch.randn(6, D_, 2)), VE,
         r"the state_len of conv_states \(last dimension\) must be >= width - 1 = 3, got 2"),
    Case("packed", "cache_indices_int64", put(cache_indices=lambda a: a["cache_indices"].long()), TE,
         r"cache_indices must be torch\.int32"),
    Case("packed", "cache_indices_shape", put(cache_indices=torch.tensor([0, 1, 2], dtype=I32)), VE,
         r"cache_indices must have shape \[4\]"),
    Case("packed", "cache_indices_out_of_range", put(cache_indices=torch.tensor([5, 1, 6, 3], dtype=I32)), VE,
         r"cache_indices\[2\] = 6 is out of range for a state pool of 6 rows"),
    Case("packed", "cache_indices_repeated", put(cache_indices=torch.tensor([5, 3, -1, 3], dtype=I32)), VE,
         r"cache_indices uses pool row 3 twice"),
    Case("packed", "pool_too_small", put(cache_indices=None, conv_states=torch.randn(3, D_, 5)), VE,
         r"conv_states needs at least 4 rows .*cache_indices"),
    Case("packed", "has_initial_state_int", put(has_initial_state=lambda a: a["has_initial_state"].to(I32)), TE,
         r"has_initial_state must be torch\.bool"),
    Case("packed", "has_initial_state_shape", put(has_initial_state=torch.tensor([True])), VE,
         r"has_initial_state must have shape \[4\]"),
    Case("packed", "conv_states_aliases_x", put(x=lambda a: a["conv_states"][:2].reshape(10, D_)), VE,
         r"conv_states must not share memory with x"),
    Case("packed", "conv_states_expanded", put(conv_states=torch.randn(6, D_, 1).expand(6, D_, 5)), VE,
         r"conv_states has overlapping elements"),
    Case("packed", "conv_states_aliases_bias", put(bias=lambda a: a["conv_states"][0, :, 0]), VE,
         r"conv_states must not share memory with bias"),
    Case("packed", "conv_states_on_meta", meta("conv_states"), VE, r"conv_states must be on cpu like x"),
    Case("packed", "cache_indices_on_meta", meta("cache_indices"), VE, r"cache_indices must be on cpu like x"),
    Case("packed", "activation_unknown", put(activation="tanh"), VE, r"activation must be None"),
]


def _snapshot(a: dict) -> dict:
    return {k: v.detach().clone() for k, v in a.items()
            if isinstance(v, torch.Tensor) and v.device.type != "meta"}


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.view(torch.uint8) if t.dim() > 0 and t.element_size() > 1 else t


def _assert_unchanged(a: dict, snap: dict) -> None:
    for k, before in snap.items():
        assert torch.equal(_bits(a[k]), _bits(before)), f"rejected call modified {k}"


def test_table_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40
    assert {c.target for c in CASES} == set(BASE)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(cc, case: Case):
    torch.manual_seed(1234)
    a = BASE[case.target]()
    # the unmodified baseline is valid for the check layer; whether it also
    # computes is the op tests' business, so only a refusal would be wrong
    case.mutate(a)
    snap = _snapshot(a)
    with pytest.raises(case.exc, match=case.match) as info:
        call(cc, case.target, a)
    assert type(info.value) is case.exc, f"{type(info.value).__name__}: {info.value}"
    _assert_unchanged(a, snap)


# ---------------------------------------------------------------------------
# valid zero-size inputs: empty results of the right shape, equal to the reference


def _ref_and_got_fn(cc, B, D, L, W=4):
    x = torch.randn(B, D, L)
    w, b = torch.randn(D, W), torch.randn(D)
    init = torch.randn(B, D, W - 1)
    seq_idx = torch.randint(0, 2, (B, L), dtype=I32).sort(dim=1).values
    got = cc.causal_conv1d_fn(x, w, b, seq_idx, init, return_final_states=True, activation="silu")
    want = cc.causal_conv1d_ref(x.double(), w.double(), b.double(), seq_idx, init.double(),
                                return_final_states=True, activation="silu")
    return got, want


@pytest.mark.parametrize("B,D,L", [(0, 8, 12), (2, 0, 12), (2, 8, 0), (0, 0, 0)])
def test_zero_size_fn(cc, B, D, L):
    (out, fin), (out_ref, fin_ref) = _ref_and_got_fn(cc, B, D, L)
    assert out.shape == (B, D, L) and fin.shape == (B, D, 3)
    torch.testing.assert_close(out.double(), out_ref, rtol=3e-4, atol=1e-3)
    # with no tokens the final state is the initial state, bit for bit
    torch.testing.assert_close(fin.double(), fin_ref, rtol=0, atol=0)


@pytest.mark.parametrize("B,D,L", [(0, 8, 1), (3, 0, 1), (3, 8, 0), (0, 8, None), (3, 0, None)])
def test_zero_size_update(cc, B, D, L):
    x = torch.randn(B, D) if L is None else torch.randn(B, D, L)
    state = torch.randn(B, D, 5)
    w, b = torch.randn(D, 4), torch.randn(D)
    state_ref = state.clone().double()
    out = cc.causal_conv1d_update(x, state, w, b, activation="silu")
    out_ref = cc.causal_conv1d_update_ref(x.double(), state_ref, w.double(), b.double(), activation="silu")
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), out_ref, rtol=3e-4, atol=1e-3)
    torch.testing.assert_close(state.double(), state_ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    "T,D,cu,state_len",
    [(10, 8, [0], 3), (0, 8, [0, 0, 0], 3), (10, 8, [0, 4, 10], 0), (10, 0, [0, 4, 10], 3)],
)
def test_zero_size_varlen_states(cc, T, D, cu, state_len):
    x = torch.randn(T, D)
    cu = torch.tensor(cu, dtype=I32)
    got = cc.causal_conv1d_varlen_states(x, cu, state_len)
    want = cc.causal_conv1d_varlen_states_ref(x, cu, state_len)
    assert got.shape == (len(cu) - 1, D, state_len)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("T,D,cu", [(10, 8, [0]), (0, 8, [0, 0, 0]), (10, 0, [0, 4, 10])])
def test_zero_size_packed(cc, T, D, cu):
    x = torch.randn(T, D)
    cu = torch.tensor(cu, dtype=I32)
    B = len(cu) - 1
    w, b = torch.randn(D, 4), torch.randn(D)
    pool = torch.randn(B + 2, D, 5)
    has_init = torch.tensor([True, False][:B] + [True] * max(B - 2, 0), dtype=torch.bool)
    idx = torch.arange(B, dtype=I32).flip(0) + 1
    pool_ref = pool.clone().double()
    out = cc.causal_conv1d_packed_fwd(x, w, b, cu, pool, idx, has_init, activation="silu")
    out_ref = cc.causal_conv1d_packed_fwd_ref(x.double(), w.double(), b.double(), cu, pool_ref, idx,
                                              has_init, activation="silu")
    assert out.shape == (T, D)
    torch.testing.assert_close(out.double(), out_ref, rtol=3e-4, atol=1e-3)
    torch.testing.assert_close(pool.double(), pool_ref, rtol=0, atol=0)
