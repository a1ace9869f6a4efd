"""Adversarial inputs beyond the bad-input table (issue 22): memory shared
through a second storage, self-overlapping write targets, Python-level
argument types, double backward, writes refused before anything is written,
autograd history of written tensors, and fake/meta kernels that run the
native checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_bad_inputs import fn_args, packed_args, update_args

I32 = torch.int32


def _snap(*ts):
    return [t.detach().clone() for t in ts]


def _unchanged(ts, snap):
    for t, s in zip(ts, snap):
        assert torch.equal(t.detach(), s)


# ---------------------------------------------------------------------------
# 1. overlap by address ranges, whatever storage


def _second_storage(t: torch.Tensor) -> torch.Tensor:
    """The same bytes as t through another storage object (numpy)."""
    alias = torch.from_numpy(t.numpy())
    assert not alias.untyped_storage()._cdata == t.untyped_storage()._cdata
    assert alias.data_ptr() == t.data_ptr()
    return alias


def test_state_aliasing_x_through_numpy(cc):
    a = update_args()
    buf = torch.randn(a["conv_state"].numel() + 64)
    a["conv_state"] = buf[: a["conv_state"].numel()].view_as(a["conv_state"])
    x = _second_storage(buf)[: a["x"].numel()].view_as(a["x"])
    a["x"] = x
    snap = _snap(buf)
    with pytest.raises(ValueError, match="conv_state must not share memory with x"):
        cc.causal_conv1d_update(**a)
    _unchanged([buf], snap)


def test_final_states_out_aliasing_initial_states_through_frombuffer(cc):
    a = fn_args()
    init = a["initial_states"]
    a["final_states_out"] = torch.frombuffer(init.numpy(), dtype=init.dtype).view_as(init)
    snap = _snap(init)
    with pytest.raises(ValueError, match="final_states_out must not share memory with initial_states"):
        cc.causal_conv1d_fn(**a)
    _unchanged([init], snap)


def test_pool_aliasing_x_through_dlpack(cc):
    a = packed_args()
    pool = a["conv_states"]
    a["x"] = torch.from_dlpack(pool)[:2].reshape(-1)[: a["x"].numel()].view_as(a["x"])
    snap = _snap(pool)
    with pytest.raises(ValueError, match="conv_states must not share memory with x"):
        cc.causal_conv1d_packed_fwd(**a)
    _unchanged([pool], snap)


def test_disjoint_views_of_one_buffer_accepted(cc):
    a = update_args()
    n = a["conv_state"].numel()
    buf = torch.randn(n + a["x"].numel())
    state = buf[:n].view_as(a["conv_state"])
    x = _second_storage(buf)[n:].view_as(a["x"])
    want_state = state.clone().double()
    want = cc.causal_conv1d_update_ref(x.double(), want_state, a["weight"].double(),
                                       a["bias"].double(), "silu", a["cache_seqlens"],
                                       a["conv_state_indices"])
    got = cc.causal_conv1d_update(x, state, a["weight"], a["bias"], "silu", a["cache_seqlens"],
                                  a["conv_state_indices"])
    torch.testing.assert_close(got.double(), want, rtol=3e-4, atol=1e-3)
    torch.testing.assert_close(state.double(), want_state, rtol=0, atol=0)


@pytest.mark.parametrize("which", ["update", "packed", "fn"])
def test_self_overlapping_write_target_refused(cc, which):
    if which == "update":
        a = update_args()
        n, d, s = a["conv_state"].shape
        # rows share elements: row i starts one element after row i - 1
        a["conv_state"] = torch.randn(n + d * s).as_strided((n, d, s), (1, s, 1))
        key, name = "conv_state", "conv_state"
        call = cc.causal_conv1d_update
    elif which == "packed":
        a = packed_args()
        n, d, s = a["conv_states"].shape
        a["conv_states"] = torch.randn(d * s + 2 * n).as_strided((n, d, s), (2, s, 1))
        key, name = "conv_states", "conv_states"
        call = cc.causal_conv1d_packed_fwd
    else:
        a = fn_args()
        b, d, w1 = a["final_states_out"].shape
        a["final_states_out"] = torch.randn(64).as_strided((b, d, w1), (1, 2, 1))
        key, name = "final_states_out", "final_states_out"
        call = cc.causal_conv1d_fn
    snap = _snap(a[key])
    with pytest.raises(ValueError, match=f"{name} has overlapping elements"):
        call(**a)
    _unchanged([a[key]], snap)


# ---------------------------------------------------------------------------
# 2. Python-level argument types


def _fn_call(cc, **changes):
    a = fn_args()
    a.update(changes)
    return cc.causal_conv1d_fn(**a)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda cc: _fn_call(cc, bias=1.0), TypeError, r"bias must be a torch\.Tensor or None, got float"),
        (lambda cc: _fn_call(cc, x=np.zeros((2, 8, 12), np.float32)), TypeError,
         r"x must be a torch\.Tensor, got ndarray"),
        (lambda cc: _fn_call(cc, seq_idx=[[0] * 12] * 2), TypeError, r"seq_idx must be a torch\.Tensor or None, got list"),
        (lambda cc: _fn_call(cc, return_final_states=1), TypeError, r"return_final_states must be a bool"),
        (lambda cc: cc.causal_conv1d_varlen_states(torch.randn(10, 8), torch.tensor([0, 10], dtype=I32), 3.0),
         TypeError, r"state_len must be an int, got float"),
        (lambda cc: cc.causal_conv1d_varlen_states(torch.randn(10, 8), [0, 10], 3), TypeError,
         r"cu_seqlens must be a torch\.Tensor, got list"),
        (lambda cc: cc.causal_conv1d_packed_fwd(**{**packed_args(), "pad_slot_id": 2**63}), ValueError,
         r"pad_slot_id must fit in int64, got 9223372036854775808"),
        (lambda cc: cc.causal_conv1d_packed_fwd(**{**packed_args(), "pad_slot_id": "x"}), TypeError,
         r"pad_slot_id must be an int, got str"),
        (lambda cc: cc.causal_conv1d_packed_fwd(**{**packed_args(), "cache_indices": [0, 1, 2, 3]}),
         TypeError, r"cache_indices must be a torch\.Tensor or None, got list"),
        (lambda cc: cc.causal_conv1d_update(**{**update_args(), "conv_state": None}), TypeError,
         r"conv_state must be a torch\.Tensor, got NoneType"),
        (lambda cc: cc.causal_conv1d_update(**{**update_args(), "cache_seqlens": (0, 1, 2)}), TypeError,
         r"cache_seqlens must be a torch\.Tensor or None, got tuple"),
        (lambda cc: cc.causal_conv1d_packed_fwd(**{**packed_args(), "channels_first": None}), TypeError,
         r"channels_first must be a bool, got NoneType"),
        (lambda cc: cc.causal_conv1d_varlen_states(torch.randn(10, 8), torch.tensor([0, 10], dtype=I32), True),
         TypeError, r"state_len must be an int, got bool"),
        (lambda cc: cc.causal_conv1d_varlen_states(torch.randn(10, 8), torch.tensor([0, 10], dtype=I32), -2**64),
         ValueError, r"state_len must fit in int64"),
    ],
    ids=["bias_float", "x_numpy", "seq_idx_list", "return_final_states_int",
         "state_len_float", "cu_seqlens_list", "pad_slot_id_past_int64", "pad_slot_id_str",
         "cache_indices_list", "conv_state_none", "cache_seqlens_tuple", "channels_first_none",
         "state_len_bool", "state_len_below_int64"],
)
def test_python_argument_types(cc, call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call(cc)
    assert type(info.value) is exc


def test_activation_passed_as_seq_idx(cc):
    """transformers #47526: causal_conv1d_fn(x, weight, bias, "silu")."""
    x, w, b = torch.randn(2, 8, 12), torch.randn(8, 4), torch.randn(8)
    with pytest.raises(TypeError, match=r"activation must be passed by keyword \(activation='silu'\)"):
        cc.causal_conv1d_fn(x, w, b, "silu")
    # the 8th positional argument is activation, as upstream's
    got = cc.causal_conv1d_fn(x, w, b, None, None, False, None, "silu")
    torch.testing.assert_close(got, cc.causal_conv1d_fn(x, w, b, activation="silu"), rtol=0, atol=0)


def test_numpy_int_accepted(cc):
    x, cu = torch.randn(10, 8), torch.tensor([0, 4, 10], dtype=I32)
    got = cc.causal_conv1d_varlen_states(x, cu, np.int64(3))
    torch.testing.assert_close(got, cc.causal_conv1d_varlen_states_ref(x, cu, 3), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# 3. double backward: refused where it is asked for, never zeros


def test_double_backward_refused(cc):
    # float32: the CUDA kernels (and their emulator) have no float64
    x = torch.randn(2, 8, 12, requires_grad=True)
    w = torch.randn(8, 4, requires_grad=True)
    out = cc.causal_conv1d_fn(x, w, activation="silu")
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(out.square().sum(), (x, w), create_graph=True)
    # a first-order backward of the same graph still works
    gx, gw = torch.autograd.grad(out.square().sum(), (x, w))
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = cc.causal_conv1d_ref(xr, wr, activation="silu")
    rx, rw = torch.autograd.grad(ref.square().sum(), (xr, wr))
    torch.testing.assert_close(gx.double(), rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------
# 4. refusals before the first write; history of written tensors


def _fn_inputs(requires_grad: bool):
    a = fn_args()
    for k in ("x", "weight", "bias", "initial_states"):
        a[k].requires_grad_(requires_grad)
    return a


@pytest.mark.parametrize("grad_inputs", [False, True])
def test_final_states_out_leaf_requiring_grad_refused_before_writing(cc, grad_inputs):
    a = _fn_inputs(grad_inputs)
    fs = a["final_states_out"].requires_grad_(True)
    snap = _snap(fs)
    with pytest.raises(ValueError, match="final_states_out is a leaf tensor that requires grad"):
        cc.causal_conv1d_fn(**a)
    _unchanged([fs], snap)


@pytest.mark.parametrize("grad_inputs", [False, True])
def test_final_states_out_inference_tensor_refused_before_writing(cc, grad_inputs):
    a = _fn_inputs(grad_inputs)
    with torch.inference_mode():
        fs = torch.randn(a["final_states_out"].shape)
    a["final_states_out"] = fs
    snap = _snap(fs)
    with pytest.raises(ValueError, match="final_states_out is an inference tensor"):
        cc.causal_conv1d_fn(**a)
    _unchanged([fs], snap)


def test_final_states_out_with_grad_runs_forward_once(cc):
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    a = _fn_inputs(True)
    with Log():
        out, fs = cc.causal_conv1d_fn(**a)
    assert [c for c in calls if c in ("fwd", "fwd_out")] == ["fwd"], calls
    assert fs is a["final_states_out"]
    _, want_fs = cc.causal_conv1d_ref(
        a["x"].double(), a["weight"].double(), a["bias"].double(), a["seq_idx"],
        a["initial_states"].double(), return_final_states=True, activation="silu")
    torch.testing.assert_close(fs.double(), want_fs, rtol=0, atol=0)


def test_final_states_out_gradient_flows_through_copy(cc):
    a = _fn_inputs(True)
    out, fs = cc.causal_conv1d_fn(**a)
    g = torch.randn_like(fs)
    gx, gi = torch.autograd.grad((fs * g).sum(), (a["x"], a["initial_states"]))
    xr = a["x"].detach().double().requires_grad_()
    ir = a["initial_states"].detach().double().requires_grad_()
    _, fr = cc.causal_conv1d_ref(xr, a["weight"].detach().double(), a["bias"].detach().double(),
                                 a["seq_idx"], ir, return_final_states=True, activation="silu")
    rx, ri = torch.autograd.grad((fr * g.double()).sum(), (xr, ir))
    torch.testing.assert_close(gx.double(), rx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gi.double(), ri, rtol=1e-5, atol=1e-6)


def test_final_states_out_stale_history_replaced(cc):
    """An overwritten final_states_out must not pass gradient to what it held."""
    a = fn_args()
    src = torch.randn(a["final_states_out"].shape, requires_grad=True)
    a["final_states_out"] = src * 2  # history: MulBackward to src
    out, fs = cc.causal_conv1d_fn(**a)
    assert fs is a["final_states_out"]
    fs.sum().backward()
    assert src.grad is None or torch.count_nonzero(src.grad) == 0


@pytest.mark.parametrize("which", ["update", "packed"])
def test_state_leaf_requiring_grad_refused_before_writing(cc, which):
    a = update_args() if which == "update" else packed_args()
    key = "conv_state" if which == "update" else "conv_states"
    a[key].requires_grad_(True)
    call = cc.causal_conv1d_update if which == "update" else cc.causal_conv1d_packed_fwd
    snap = _snap(a[key])
    with pytest.raises(ValueError, match=f"{key} is a leaf tensor that requires grad"):
        call(**a)
    _unchanged([a[key]], snap)
    with torch.no_grad():  # no gradient asked for: written as any buffer
        call(**a)


@pytest.mark.parametrize("which", ["update", "packed"])
def test_state_inference_tensor_refused_outside_inference_mode(cc, which):
    a = update_args() if which == "update" else packed_args()
    key = "conv_state" if which == "update" else "conv_states"
    call = cc.causal_conv1d_update if which == "update" else cc.causal_conv1d_packed_fwd
    with torch.inference_mode():
        a[key] = a[key].clone()
    snap = _snap(a[key])
    with pytest.raises(ValueError, match=f"{key} is an inference tensor"):
        call(**a)
    _unchanged([a[key]], snap)
    with torch.inference_mode():
        call(**a)


def test_state_with_history_is_detached(cc):
    a = update_args()
    src = torch.randn(a["conv_state"].shape, requires_grad=True)
    state = src * 1.5
    a["conv_state"] = state
    cc.causal_conv1d_update(**a)
    assert not state.requires_grad and state.grad_fn is None
    view = (src * 1.5)[:]
    a["conv_state"] = view
    with pytest.raises(ValueError, match="conv_state is a view with autograd history"):
        cc.causal_conv1d_update(**a)


def test_fwd_out_out_requiring_grad_refused(cc):
    a = fn_args()
    out = torch.randn(a["x"].shape, requires_grad=True)
    snap = _snap(out)
    with pytest.raises(ValueError, match="out is a leaf tensor that requires grad"):
        cc.ops.fwd_out(a["x"], a["weight"], a["bias"], a["seq_idx"], a["initial_states"], out,
                       None, True)
    _unchanged([out], snap)


def test_written_state_bumps_version(cc):
    a = update_args()
    v = a["conv_state"]._version
    cc.causal_conv1d_update(**a)
    assert a["conv_state"]._version > v


# ---------------------------------------------------------------------------
# 5. fake and meta kernels run the native checks


def test_meta_mismatched_shapes_refused(cc):
    x = torch.empty(2, 8, 12, device="meta")
    with pytest.raises(ValueError, match=r"weight must have shape \[8, width\]"):
        cc.causal_conv1d_fn(x, torch.empty(7, 4, device="meta"))
    with pytest.raises(ValueError, match=r"initial_states must have shape \[2, 8, 3\]"):
        cc.causal_conv1d_fn(x, torch.empty(8, 4, device="meta"),
                            initial_states=torch.empty(2, 8, 4, device="meta"))
    out = cc.causal_conv1d_fn(x, torch.empty(8, 4, device="meta"))
    assert out.shape == (2, 8, 12) and out.device.type == "meta"


def test_meta_update_and_packed_checks(cc):
    m = dict(device="meta")
    with pytest.raises(ValueError, match="the state_len of conv_state"):
        cc.causal_conv1d_update(torch.empty(3, 8, **m), torch.empty(3, 8, 2, **m),
                                torch.empty(8, 4, **m))
    with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D"):
        cc.causal_conv1d_varlen_states(torch.empty(10, 8, **m),
                                       torch.empty((), dtype=I32, **m), 3)


def test_fake_tensor_checks(cc):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 12)
        with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D"):
            cc.causal_conv1d_varlen_states(torch.empty(10, 8), torch.empty((), dtype=I32), 3)
        with pytest.raises(ValueError, match=r"weight must be 2-D"):
            cc.causal_conv1d_fn(x, torch.empty(8), return_final_states=True)
        with pytest.raises(TypeError, match=r"seq_idx must be torch\.int32|seq_idx must be"):
            cc.causal_conv1d_fn(x, torch.empty(8, 4), seq_idx=torch.empty(2, 12))
        out = cc.causal_conv1d_fn(x, torch.empty(8, 4))
        assert out.shape == (2, 8, 12)


def test_compile_refuses_with_the_native_message(cc):
    torch._dynamo.reset()

    def f(x, w):
        return cc.causal_conv1d_fn(x, w, return_final_states=True)

    with pytest.raises(Exception, match=r"weight must be 2-D"):
        torch.compile(f, fullgraph=True)(torch.randn(2, 8, 12), torch.randn(8))


def test_compile_dynamic_shapes(cc):
    torch._dynamo.reset()

    def f(x, w, b):
        return cc.causal_conv1d_fn(x, w, b, activation="silu")

    g = torch.compile(f, fullgraph=True, dynamic=True)
    for B, L in ((2, 12), (3, 17)):
        x, w, b = torch.randn(B, 8, L), torch.randn(8, 4), torch.randn(8)
        torch.testing.assert_close(g(x, w, b), f(x, w, b), rtol=0, atol=0)


def test_forward_mode_ad_refused_with_final_states_out(cc):
    import torch.autograd.forward_ad as fwAD

    a = fn_args()
    fs = a["final_states_out"]
    snap = _snap(fs)
    with fwAD.dual_level():
        a["x"] = fwAD.make_dual(a["x"], torch.randn_like(a["x"]))
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            cc.causal_conv1d_fn(**a)
    _unchanged([fs], snap)


@pytest.mark.parametrize("bad", ["shape", "device", "expanded"])
def test_final_states_out_checked_before_forward_with_grad(cc, bad):
    a = _fn_inputs(True)
    fs = a["final_states_out"]
    if bad == "shape":
        a["final_states_out"] = torch.randn(fs.shape[0], fs.shape[1], fs.shape[2] + 1)
        match = r"final_states_out must have shape \[2, 8, 3\]"
    elif bad == "device":
        a["final_states_out"] = torch.empty(fs.shape, device="meta")
        match = r"final_states_out must be on cpu like x, got meta"
    else:
        a["final_states_out"] = torch.randn(1, fs.shape[1], fs.shape[2]).expand(fs.shape)
        match = r"final_states_out has overlapping elements"
    with pytest.raises(ValueError, match=match):
        cc.causal_conv1d_fn(**a)


@pytest.mark.parametrize("which", ["update", "packed", "fwd_out"])
def test_all_inference_tensors_refused_outside_inference_mode(cc, which):
    """Every argument an inference tensor: the call carries no Autograd key."""
    with torch.inference_mode():
        if which == "update":
            a = update_args()
            key, call = "conv_state", cc.causal_conv1d_update
        elif which == "packed":
            a = packed_args()
            key, call = "conv_states", cc.causal_conv1d_packed_fwd
        else:
            a = fn_args()
            key, call = "final_states_out", cc.causal_conv1d_fn
    snap = _snap(a[key])
    with pytest.raises(ValueError, match=f"{key} is an inference tensor"):
        call(**a)
    _unchanged([a[key]], snap)
    with torch.inference_mode():
        call(**a)
