"""The kernels a user could pick instead of ours, behind one interface, for
the GPU suite (gpu.py) and the CPU one (cpu_peers.py). None of their code is
in this repository: each peer is imported when installed (tools/peers.sh
builds and stages the wheels, or with `cpu` builds the CPU peers) and
reported as "not installed" otherwise.

Every adapter takes our conventions and calls the peer the way its users do:

  fwd(x, w, b)              x (B, D, L) any layout -> callable giving y (B, D, L)
  bwd(x, w, b, dout)        -> callable giving (dx, dweight, dbias)
  decode(x, state, w, b)    x (B, D), state (B, D, W-1) -> (step, state_now):
                            step() runs one token and returns y (B, D), updating
                            the adapter's own copy of the state; state_now()
                            returns that copy as (B, D, W-1)
  spec(x, state, w, b, n)   a speculative step: x (B, D, 1+k), state
                            (B, D, W-1+k), n (B,) int32 accepted tokens of
                            the previous step -> (step, state_now) as decode
  varlen(x, w, b, cu, seq)  x (1, D, T) channel-last view of packed sequences,
                            cu_seqlens (N+1,) int32 and the same cut as
                            seq_idx (1, T) int32 -> callable giving y (1, D, T)

silu throughout. Preparation (state layout conversions, imports) happens when
an adapter method is called, never inside the returned callable, so that a
timing of the callable measures only the peer's call. An op a peer lacks is
None; `widths` says which W it accepts. verify() compares one op with our
float64 reference.

    python benchmarks/suites/peers.py     # which peers import here, and why not
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch

# (rtol, atol) from the spec (upstream's own test tolerances); dweight and
# dbias are sums over B*L products, accurate relative to their largest entry
# rather than entry by entry, so their atol is scaled by that entry.
TOL = {torch.float32: (3e-4, 1e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (1e-2, 5e-2)}
PARAM_TOL = {torch.float32: (1e-3, 1e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (1e-2, 5e-2)}

VLLM_REASON = ("not installable standalone: vllm/model_executor/layers/mamba/ops/causal_conv1d.py "
               "imports vllm.attention.backends.utils and vllm.triton_utils, which import the whole "
               "vllm package; its wheel (336 MB for vllm 0.33.0 x86_64) carries a _C extension "
               "built against one torch and is over the 64 MiB a device call carries")


class Ours:
    """This repository's kernel (the module kernels.get_local_kernel gives)."""

    name = "ours"
    widths = None  # 1..32

    def __init__(self, cc, deterministic: bool = False):
        self.cc, self.deterministic = cc, deterministic

    def fwd(self, x, w, b):
        return lambda: self.cc.causal_conv1d_fn(x, w, b, activation="silu")

    def bwd(self, x, w, b, dout):
        det = self.deterministic
        return lambda: self.cc.ops.bwd(x, w, b, None, None, dout, None, True, det)[:3]

    def decode(self, x, state, w, b):
        st = state.clone()
        return (lambda: self.cc.causal_conv1d_update(x, st, w, b, "silu")), (lambda: st)

    def spec(self, x, state, w, b, accepted):
        st = state.clone()  # clone keeps the strides: vLLM's layout stays vLLM's
        return (lambda: self.cc.causal_conv1d_update(x, st, w, b, "silu",
                                                     num_accepted_tokens=accepted)), (lambda: st)

    def varlen(self, x, w, b, cu_seqlens, seq_idx):
        return lambda: self.cc.causal_conv1d_fn(x, w, b, seq_idx=seq_idx, activation="silu")


class Torch:
    """What transformers falls back to without a kernel: F.conv1d and silu;
    the backward is autograd's (graph built outside the timed call)."""

    name = "torch"
    widths = None
    varlen = None  # no packed path: the fallback loops over sequences

    @staticmethod
    def _conv(x, w, b):
        L, W = x.shape[-1], w.shape[1]
        y = torch.nn.functional.conv1d(x, w.unsqueeze(1), b, padding=W - 1, groups=x.shape[1])
        return torch.nn.functional.silu(y[..., :L])

    def fwd(self, x, w, b):
        return lambda: self._conv(x, w, b)

    def bwd(self, x, w, b, dout):
        xr, wr, br = (t.detach().requires_grad_() for t in (x, w, b))
        y = self._conv(xr, wr, br)
        return lambda: torch.autograd.grad(y, (xr, wr, br), dout, retain_graph=True)

    def decode(self, x, state, w, b):
        st = state.clone()

        def step():
            xs = torch.cat([st, x.unsqueeze(-1)], dim=-1)
            y = torch.nn.functional.silu(
                torch.nn.functional.conv1d(xs, w.unsqueeze(1), b, groups=x.shape[1])[..., -1])
            st.copy_(xs[..., 1:])
            return y

        return step, (lambda: st)

    def spec(self, x, state, w, b, accepted):
        """The step in tensor ops a user could write without a kernel (no
        host sync, so it replays in a CUDA graph): gather each sequence's
        window from column n - 1, convolve it with the tokens, write the
        window's last W - 2 columns and the tokens back from column 0."""
        st = state.clone()
        B, D, S = st.shape
        W, L = w.shape[1], x.shape[-1]
        n = accepted.long().clamp(1, S - W + 2)
        cols = (n[:, None] - 1 + torch.arange(W - 1, device=n.device)).unsqueeze(1)
        cols = cols.expand(B, D, W - 1)

        def step():
            xs = torch.cat([torch.gather(st, 2, cols), x], dim=-1)  # (B, D, W - 1 + L)
            y = torch.nn.functional.silu(
                torch.nn.functional.conv1d(xs, w.unsqueeze(1), b, groups=D))
            st[..., : W - 2 + L].copy_(xs[..., 1:])
            return y

        return step, (lambda: st)


class Upstream:
    """Dao-AILab causal-conv1d 1.7 (CUDA, pybind11 module causal_conv1d_cuda):
    causal_conv1d_fn / causal_conv1d_update, and the backward its autograd
    Function calls. Widths 2..4; seq_idx only with channel-last x."""

    name = "upstream"
    widths = (2, 3, 4)

    def __init__(self, module=None):
        self.m = module or importlib.import_module("causal_conv1d")
        self.cpp = importlib.import_module(self.m.__name__ + ".cpp_functions")

    def fwd(self, x, w, b):
        return lambda: self.m.causal_conv1d_fn(x, w, b, activation="silu")

    def bwd(self, x, w, b, dout):
        f = self.cpp.causal_conv1d_bwd_function
        # (x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx,
        #  return_dinitial_states, silu), as CausalConv1dFn.backward passes them
        return lambda: f(x, w, b, dout, None, None, None, None, False, True)[:3]

    def decode(self, x, state, w, b):
        st = state.clone()
        return (lambda: self.m.causal_conv1d_update(x, st, w, b, "silu")), (lambda: st)

    def varlen(self, x, w, b, cu_seqlens, seq_idx):
        return lambda: self.m.causal_conv1d_fn(x, w, b, seq_idx=seq_idx, activation="silu")


class Fla:
    """flash-linear-attention (fla-core) Triton kernels: x is (B, T, D), so
    our (B, D, L) tensors go in as transposed views (no copy); the backward
    is the function its autograd Function calls; decode keeps a (B, D, W)
    cache whose last column is the newest input; varlen takes cu_seqlens."""

    name = "fla"
    widths = None

    def __init__(self):
        self.conv = importlib.import_module("fla.modules.conv").causal_conv1d
        self.ops = importlib.import_module("fla.modules.conv.triton.ops")

    def fwd(self, x, w, b):
        xt = x.transpose(1, 2)
        return lambda: self.conv(xt, w, b, activation="silu", backend="triton")[0].transpose(1, 2)

    def bwd(self, x, w, b, dout):
        xt, dt = x.transpose(1, 2), dout.transpose(1, 2)
        f = self.ops.causal_conv1d_bwd

        def run():
            dx, dw, db, _, _ = f(x=xt, dy=dt, dht=None, weight=w, bias=b, activation="silu")
            return dx.transpose(1, 2), dw, db

        return run

    def decode(self, x, state, w, b):
        # column 0 is dropped by the step, columns 1.. are the W-1 last inputs
        cache = torch.cat([torch.zeros_like(state[..., :1]), state], dim=-1).contiguous()
        f = self.ops.causal_conv1d_update
        return (lambda: f(x, cache, weight=w, bias=b, activation="silu")[0]), (lambda: cache[..., 1:])

    def varlen(self, x, w, b, cu_seqlens, seq_idx):
        xt, cu = x.transpose(1, 2), cu_seqlens.long()
        # the chunk map FLA's layers compute once per batch, for every layer
        chunks = importlib.import_module("fla.ops.utils").prepare_chunk_indices(cu, 64)
        return lambda: self.conv(xt, w, b, activation="silu", backend="triton", cu_seqlens=cu,
                                 chunk_indices=chunks)[0].transpose(1, 2)


PEERS = {"upstream": Upstream, "fla": Fla}


def instantiate(classes: dict) -> tuple[dict, dict]:
    """({name: adapter} for the classes whose peer loads, {name: reason} for
    the rest)."""
    found, missing = {}, {}
    for name, cls in classes.items():
        try:
            found[name] = cls()
        except (ImportError, OSError) as e:  # a missing module, a library that does not load
            missing[name] = f"not installed ({type(e).__name__}: {e})"
    return found, missing


def detect() -> tuple[dict, dict]:
    """instantiate(PEERS), and why vLLM is not among them."""
    found, missing = instantiate(PEERS)
    missing["vllm"] = VLLM_REASON
    return found, missing


# -- the CPU peers: vLLM's CPU backend (tools/peers.sh cpu builds them) ----------

def cpu_peers_library() -> Optional[str]:
    """Where tools/peers.sh cpu put the CPU peers for this torch, or None."""
    import hashlib
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cache = Path(os.environ.get("CAUSAL_CONV1D_CACHE", Path.home() / ".cache/causal-conv1d"))
    binding = hashlib.sha256((root / "tools/peers_cpu.cpp").read_bytes()).hexdigest()[:12]
    found = sorted(cache.glob(f"peers/cpu-vllm*-torch{torch.__version__}-{binding}/cpu_peers.so"))
    return str(found[-1]) if found else None


def _cpu_peer_ops():
    if not hasattr(torch.ops, "cpu_peers") or not hasattr(torch.ops.cpu_peers, "sgl_fwd"):
        lib = cpu_peers_library()
        if lib is None:
            raise ImportError("not built for this torch (tools/peers.sh cpu)")
        torch.ops.load_library(lib)
    return torch.ops.cpu_peers


def _dim_minor(state):
    """The same values with stride 1 along D (vLLM's and SGLang's pool layout)."""
    return state.transpose(1, 2).contiguous().transpose(1, 2)


class VllmCpu:
    """vLLM's CPU causal_conv1d_update (csrc/cpu/mamba_cpu.cpp), which its
    Mamba layers call on CPU: x (B, D), the pool in any strides. vLLM's CPU
    wrapper drops num_accepted_tokens, and its prefill is F.conv1d in a
    Python loop over sequences (the torch peer), so decode only."""

    name = "vllm-cpu"
    widths = None
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    fwd = bwd = spec = varlen = None

    def __init__(self):
        self.ops = _cpu_peer_ops()

    def decode(self, x, state, w, b):
        st, f = state.clone(), self.ops.vllm_update
        return (lambda: f(x, st, w, b, "silu", None, None, -1)), (lambda: st)


class SglCpu:
    """SGLang's CPU kernels as vLLM vendors them (csrc/cpu/sgl-kernels/
    conv.cpp), which vLLM's gated delta-net layers call on CPU: W = 4, bf16
    (its fp16 path needs AVX512-FP16), D a multiple of 32, the weight packed
    once at load, the pool with stride 1 along D (other strides are
    converted in place on the first call, so the adapter hands it that
    layout), and the prefill always writes a pool (here a scratch one, no
    initial states)."""

    name = "sgl-cpu"
    widths = (4,)
    dtypes = (torch.bfloat16,)
    dim_multiple = 32
    fwd = bwd = None

    def __init__(self):
        self.ops = _cpu_peer_ops()

    def decode(self, x, state, w, b):
        st, pw, f = _dim_minor(state), self.ops.sgl_weight_pack(w), self.ops.sgl_update
        xc = x.contiguous()
        return (lambda: f(xc, st, pw, b, True, None, None, -1, True)), (lambda: st)

    def spec(self, x, state, w, b, accepted):
        st, pw, f = _dim_minor(state), self.ops.sgl_weight_pack(w), self.ops.sgl_update
        xt = x.transpose(1, 2).contiguous()  # (B, 1 + k, D): tokens of a projection
        rows = torch.arange(x.shape[0], dtype=torch.int32)
        n = accepted.to(torch.int32)
        return (lambda: f(xt, st, pw, b, True, n, rows, -1, True).transpose(1, 2)), (lambda: st)

    def varlen(self, x, w, b, cu_seqlens, seq_idx):
        xt, pw, f = x[0], self.ops.sgl_weight_pack(w), self.ops.sgl_fwd  # (D, T), stride 1 along D
        n, D, W = cu_seqlens.numel() - 1, x.shape[1], w.shape[1]
        pool = torch.empty(n, W - 1, D, dtype=x.dtype).transpose(1, 2)
        rows, fresh = torch.arange(n, dtype=torch.int32), torch.zeros(n, dtype=torch.bool)
        cu = cu_seqlens.to(torch.int32)
        return lambda: f(xt, pw, b, pool, cu, rows, fresh, True, -1, True).unsqueeze(0)


CPU_PEERS = {"vllm-cpu": VllmCpu, "sgl-cpu": SglCpu}


def detect_cpu() -> tuple[dict, dict]:
    """instantiate(CPU_PEERS)."""
    return instantiate(CPU_PEERS)


def supports(adapter, op: str, width: int, dtype: Optional[torch.dtype] = None,
             dim: Optional[int] = None) -> Optional[str]:
    """None if adapter runs op at this width (and dtype, and number of
    channels), else why not."""
    if getattr(adapter, op, None) is None:
        return f"no {op}"
    if adapter.widths is not None and width not in adapter.widths:
        return f"width {width} unsupported"
    if dtype is not None and dtype not in getattr(adapter, "dtypes", (dtype,)):
        return f"{str(dtype).removeprefix('torch.')} unsupported"
    multiple = getattr(adapter, "dim_multiple", 1)
    if dim is not None and dim % multiple:
        return f"D not a multiple of {multiple}"
    return None


# -- verification against the float64 reference ---------------------------------

def mismatch(got: torch.Tensor, want: torch.Tensor, tol, scaled: bool = False) -> float:
    """max |got - want| / (atol + rtol |want|); at most 1 passes. With scaled,
    atol is relative to max |want|."""
    rtol, atol = tol
    got, want = got.double(), want.double()
    if got.shape != want.shape:
        return float("inf")
    if scaled:
        atol = atol * max(want.abs().max().item(), 1.0)
    err = (got - want).abs() / (atol + rtol * want.abs())
    return err.max().item() if err.numel() else 0.0


def reference(cc, op: str, x, w, b, dout=None, state=None, seq_idx=None, accepted=None):
    """The float64 results op must reproduce, from our reference.py."""
    d = lambda t: None if t is None else t.double()  # noqa: E731
    if op == "fwd":
        return (cc.causal_conv1d_ref(d(x), d(w), d(b), activation="silu"),)
    if op == "varlen":
        return (cc.causal_conv1d_ref(d(x), d(w), d(b), seq_idx=seq_idx, activation="silu"),)
    if op == "bwd":
        leaves = [d(t).requires_grad_() for t in (x, w, b)]
        y = cc.causal_conv1d_ref(*leaves, activation="silu")
        return torch.autograd.grad(y, leaves, d(dout))
    if op == "decode":
        y = cc.causal_conv1d_ref(d(x).unsqueeze(-1), d(w), d(b), initial_states=d(state),
                                 activation="silu")[..., 0]
        return y, torch.cat([state, x.unsqueeze(-1)], dim=-1)[..., 1:]
    if op == "spec":  # on the CPU: the reference reads the counts one by one
        c = lambda t: t.double().cpu()  # noqa: E731
        st = c(state)
        y = cc.causal_conv1d_update_ref(c(x), st, c(w), c(b), "silu",
                                        num_accepted_tokens=accepted.cpu())
        # the state only moves inputs: exact in any dtype
        return y.to(x.device), st.to(state.device, state.dtype)
    raise ValueError(op)


def verify(adapter, op: str, want, x, w, b, dout=None, state=None, cu_seqlens=None,
           seq_idx=None, accepted=None) -> tuple[bool, str]:
    """Runs adapter's op once on these inputs and compares with want (from
    reference()). Returns (ok, detail); detail names the worst output."""
    tol = TOL[x.dtype]
    if op == "fwd":
        got, checks = (adapter.fwd(x, w, b)(),), [("y", tol, False)]
    elif op == "varlen":
        got, checks = (adapter.varlen(x, w, b, cu_seqlens, seq_idx)(),), [("y", tol, False)]
    elif op == "bwd":
        got = adapter.bwd(x, w, b, dout)()
        ptol = PARAM_TOL[w.dtype]
        checks = [("dx", tol, False), ("dweight", ptol, True), ("dbias", ptol, True)]
    elif op in ("decode", "spec"):
        step, state_now = (adapter.decode(x, state, w, b) if op == "decode"
                           else adapter.spec(x, state, w, b, accepted))
        y = step()
        # the state only moves inputs: bit-exact
        got, checks = (y, state_now()), [("y", tol, False), ("state", (0.0, 0.0), False)]
    else:
        raise ValueError(op)
    worst, detail = 0.0, ""
    for (name, t, scaled), g, r in zip(checks, got, want):
        if name == "state":
            e = 0.0 if torch.equal(g, r) else float("inf")
        else:
            e = mismatch(g, r, t, scaled)
        if e > worst or not detail:
            worst, detail = e, f"{name} {e:.2f} of tolerance"
    return worst <= 1.0, detail


def main() -> int:
    found, missing = detect()
    for name, adapter in found.items():
        mod = adapter.m if name == "upstream" else importlib.import_module("fla")
        print(f"{name}: installed ({mod.__name__} {getattr(mod, '__version__', '?')}, {mod.__file__})")
        if name == "upstream":  # the extension loaded; its entry points and torch.library ops
            ext = importlib.import_module("causal_conv1d_cuda")
            print(f"  extension {ext.__file__}: {', '.join(n for n in dir(ext) if n.startswith('causal'))}")
            ops = [n for n in ("_causal_conv1d_fwd_cpp", "_causal_conv1d_bwd_cpp", "_causal_conv1d_update_cpp")
                   if hasattr(torch.ops.DaoAILab, n)]
            print(f"  registered: {', '.join('DaoAILab::' + n for n in ops)}")
    for name, why in missing.items():
        print(f"{name}: {why}")
    return 0 if set(found) == set(PEERS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
