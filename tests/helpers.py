"""The test-support module: loading the kernel (as kernel-builder's ci-test
does), the backends each op's tests run on, random inputs in every layout,
tolerances, comparison."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


def kernels_variants():
    """kernels' own variant-name parser and resolver (get_variants_local,
    resolve_variant, parse_variant): the module kernels.variants up to
    kernels 0.18, kernels._internals.variants from 0.19, whose public
    get_kernel_variants reads Hub repositories only."""
    try:
        import kernels.variants as variants
    except ModuleNotFoundError:
        import kernels._internals.variants as variants
    return variants


# (rtol, atol) per dtype, from the spec (upstream's own tolerances).
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (3e-4, 1e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (1e-2, 5e-2),
}
_PRECISION_ORDER = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Sums over B * L products (dweight, dbias): accumulated in fp32 (fp64 for
# fp64) and rounded once to the weight's dtype, so the weight's dtype alone
# sets their tolerance; fp32's rtol allows for the length of the sums.
SUM_TOLERANCES = {**TOLERANCES, torch.float32: (1e-3, 1e-3)}

# x's memory layouts (randn_layout). On CUDA: contiguous -> the rows kernels
# (tiled where aligned); unaligned (L-contiguous rows at odd element offsets)
# -> the rows kernels without vector loads; channel_last / proj_slice -> the
# chanlast kernels (widths <= 8); strided -> generic. On CPU they pick the
# kernels' row, channel-last and strided loops.
LAYOUTS = ["contiguous", "channel_last", "proj_slice", "strided", "unaligned"]

# x / weight dtype pairs every backend supports on CPU (any pairing, plus fp64).
DTYPE_PAIRS = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
    (torch.float32, torch.float16),
    (torch.float16, torch.bfloat16),
    (torch.bfloat16, torch.float16),
    (torch.float64, torch.float64),
]
# CUDA refuses float64: every pairing but that one.
CUDA_DTYPE_PAIRS = [p for p in DTYPE_PAIRS if p[0] != torch.float64]


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def tolerance(*dtypes: torch.dtype, sums: bool = False) -> tuple[float, float]:
    """The loosest tolerance among the dtypes involved (of SUM_TOLERANCES
    with `sums`)."""
    worst = max(dtypes, key=_PRECISION_ORDER.index)
    return (SUM_TOLERANCES if sums else TOLERANCES)[worst]


def dev() -> str:
    """The device tests make tensors on: torch's default, which the `backend`
    fixture sets to the backend's."""
    return torch.get_default_device().type


def randn_layout(
    B: int, D: int, L: int, layout: str, dtype: torch.dtype, device: str | None = None
) -> torch.Tensor:
    """A (B, D, L) random tensor with the given memory layout:

    contiguous    x.stride(2) == 1
    channel_last  (B, L, D) storage viewed as (B, D, L): x.stride(1) == 1
    proj_slice    a channel slice of a wider (B, L, 3D) projection, transposed
    strided       every stride > 1 (a ::2 view of a larger tensor)
    unaligned     L-contiguous, rows starting at odd element offsets
    """
    g = dict(dtype=dtype, device=device)
    if layout == "contiguous":
        return torch.randn(B, D, L, **g)
    if layout == "channel_last":
        return torch.randn(B, L, D, **g).transpose(1, 2)
    if layout == "proj_slice":
        return torch.randn(B, L, 3 * D, **g)[..., D : 2 * D].transpose(1, 2)
    if layout == "strided":
        return torch.randn(B, 2 * D, 2 * L, **g)[:, ::2, ::2]
    if layout == "unaligned":
        return torch.randn(B, D, L + 1, **g)[..., 1:]
    raise ValueError(layout)


def alternating_seq_idx(B: int, L: int, device: str | None = None) -> torch.Tensor:
    """(B, L) int32 ids 0 0 1 1 0 0 1 1 ... with padding at every 7th token:
    equal ids that are not adjacent, at every distance a width reaches (ids
    compare for equality, they are not runs)."""
    s = (torch.arange(L, device="cpu") // 2 % 2).int().repeat(B, 1)
    s[:, 3::7] = -1
    return s.to(device or dev())


def make_seq_idx(pattern, B: int, L: int, device: str | None = None) -> torch.Tensor | None:
    """seq_idx for the case helpers: None for a false `pattern`, random
    segments (random_seq_idx) for True, alternating_seq_idx for "alternating"."""
    if not pattern:
        return None
    if pattern == "alternating":
        return alternating_seq_idx(B, L, device)
    return random_seq_idx(B, L, device=device)


def random_seq_idx(B: int, L: int, padding: bool = True, device: str | None = None) -> torch.Tensor:
    """(B, L) int32 segment ids: non-decreasing segments, optionally with
    padding (-1) runs at random places, as packed batches have."""
    rows = []
    for _ in range(B):
        n_seg = int(torch.randint(1, 5, ()).item())
        cuts = torch.sort(torch.randint(0, L + 1, (n_seg - 1,), device="cpu")).values.tolist()
        ids = torch.empty(L, dtype=torch.int32, device="cpu")
        start = 0
        for seg, end in enumerate(cuts + [L]):
            ids[start:end] = seg
            start = end
        if padding and L > 2 and torch.rand(()) < 0.7:
            a = int(torch.randint(0, L, ()).item())
            b = int(torch.randint(a, min(L, a + 4) + 1, ()).item())
            ids[a:b] = -1
        rows.append(ids)
    return torch.stack(rows).to(device or dev())


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtypes, msg: str = "") -> None:
    rtol, atol = tolerance(*dtypes)
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}"
    )


# ---------------------------------------------------------------------------
# Cases shared by the kernel-path grids: one call of an op on random inputs
# made on dev(), checked against the float64 reference

def pair_id(p) -> str:
    return f"x{dtype_name(p[0])}-w{dtype_name(p[1])}"


def close(got, want, dtypes, msg, scaled=False):
    """assert_close at the dtypes' tolerance; `scaled`, for sums over B * L
    terms (e.g. dweight): the dtypes' SUM_TOLERANCES, atol relative to the
    largest reference value."""
    rtol, atol = tolerance(*dtypes, sums=scaled)
    want = want.detach().double().cpu()
    if scaled:
        atol *= max(1.0, want.abs().max().item())
    torch.testing.assert_close(
        got.detach().double().cpu(), want, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}"
    )


def exact(got, want, msg):
    assert torch.equal(got.detach().double().cpu(), want.detach().double().cpu()), msg


def to_double(t):
    return None if t is None else t.double()


def fwd_case(cc, seed, *, B=2, D=40, L=70, W=4, xdt=torch.float32, wdt=torch.float32,
             layout="contiguous", bias=True, act="silu", seq=False, init=True, final=True,
             state_layout="contiguous"):
    x = randn_layout(B, D, L, layout, xdt)
    w = torch.randn(D, W, dtype=wdt, device=dev())
    b = torch.randn(D, dtype=wdt, device=dev()) if bias else None
    s = make_seq_idx(seq, B, L)
    ini = randn_layout(B, D, W - 1, state_layout, xdt) if init else None
    got = cc.causal_conv1d_fn(x, w, b, seq_idx=s, initial_states=ini,
                              return_final_states=final, activation=act)
    want = cc.causal_conv1d_ref(x.double(), w.double(), to_double(b), seq_idx=s,
                                initial_states=to_double(ini), return_final_states=final,
                                activation=act)
    msg = (f"seed={seed} B={B} D={D} L={L} W={W} x={xdt} w={wdt} layout={layout} bias={bias} "
           f"act={act} seq={seq} init={init} final={final} states={state_layout}")
    out, ref = (got[0], want[0]) if final else (got, want)
    assert out.dtype == xdt and out.shape == (B, D, L) and out.device.type == dev(), msg
    if layout in ("channel_last", "proj_slice") and D > 1 and L > 1:
        assert out.stride(1) == 1, f"channel-last x must give channel-last out: {msg}"
    if layout == "contiguous":
        assert out.is_contiguous(), msg
    close(out, ref, (xdt, wdt), msg)
    if final:
        assert got[1].dtype == xdt and got[1].shape == (B, D, W - 1), msg
        exact(got[1], want[1], "final_states must be exact copies: " + msg)
    return x, w, b, s, ini


def bwd_case(cc, seed, *, B=2, D=40, L=70, W=4, xdt=torch.float32, wdt=torch.float32,
             layout="contiguous", bias=True, act="silu", seq=False, init=True, final=True,
             dout_layout=None, deterministic=False):
    x = randn_layout(B, D, L, layout, xdt).detach().requires_grad_()
    w = torch.randn(D, W, dtype=wdt, device=dev(), requires_grad=True)
    b = torch.randn(D, dtype=wdt, device=dev(), requires_grad=True) if bias else None
    s = make_seq_idx(seq, B, L)
    ini = torch.randn(B, D, W - 1, dtype=xdt, device=dev(), requires_grad=True) if init else None
    dout = randn_layout(B, D, L, dout_layout or layout, xdt)
    dfin = torch.randn(B, D, W - 1, dtype=xdt, device=dev()) if final else None
    inputs = [t for t in (x, w, b, ini) if t is not None]

    def run(fn, conv):
        ins = [conv(t).detach().requires_grad_() for t in inputs]
        xx, ww = ins[0], ins[1]
        bb = ins[2] if bias else None
        ii = ins[-1] if init else None
        res = fn(xx, ww, bb, seq_idx=s, initial_states=ii, return_final_states=final,
                 activation=act)
        outs, grads = ([res[0], res[1]], [conv(dout), conv(dfin)]) if final else ([res], [conv(dout)])
        return torch.autograd.grad(outs, ins, grads)

    saved = os.environ.get("CAUSAL_CONV1D_DETERMINISTIC")
    os.environ["CAUSAL_CONV1D_DETERMINISTIC"] = "1" if deterministic else "0"
    try:
        got = run(cc.causal_conv1d_fn, lambda t: t)
    finally:
        if saved is None:
            os.environ.pop("CAUSAL_CONV1D_DETERMINISTIC")
        else:
            os.environ["CAUSAL_CONV1D_DETERMINISTIC"] = saved
    want = run(cc.causal_conv1d_ref, lambda t: t.double())
    names = ["dx", "dweight"] + (["dbias"] if bias else []) + (["dinitial_states"] if init else [])
    msg = (f"seed={seed} B={B} D={D} L={L} W={W} x={xdt} w={wdt} layout={layout} "
           f"dout={dout_layout or layout} bias={bias} act={act} seq={seq} init={init} "
           f"final={final} det={deterministic}")
    for name, g, r in zip(names, got, want):
        param = name in ("dweight", "dbias")
        assert g.dtype == (wdt if param else xdt), f"{name}: {msg}"
        close(g, r, (wdt,) if param else (xdt, wdt), f"{name}: {msg}", scaled=param)
    if layout in ("channel_last", "proj_slice") and D > 1 and L > 1:
        assert got[0].stride(1) == 1, f"dx keeps x's layout: {msg}"
    return got


def make_state(N, D, S, dtype, layout):
    g = dict(dtype=dtype, device=dev())
    if layout == "contiguous":
        return torch.randn(N, D, S, **g)
    if layout == "channel_last":
        return torch.randn(N, S, D, **g).transpose(1, 2)
    if layout == "slice":  # every other pool row, a column window
        return torch.randn(2 * N, D, S + 3, **g)[::2, :, 2 : 2 + S]
    raise ValueError(layout)


def pool_indices(B, N, pad_frac=0.25, pad=-1):
    idx = torch.randperm(N)[:B].to(torch.int32)
    idx[torch.rand(B) < pad_frac] = pad
    return idx.to(dev())


def update_case(cc, seed, *, B=5, D=40, W=4, S=None, L=None, xdt=torch.float32,
                wdt=torch.float32, circular=False, pool=False, act="silu", bias=True,
                x_layout="contiguous", state_layout="contiguous"):
    S = W - 1 if S is None else S
    N = B + 4 if pool else B
    state = make_state(N, D, S, xdt, state_layout)
    x = randn_layout(B, D, 1 if L is None else L, x_layout, xdt)
    if L is None:
        x = x[..., 0]
    w = torch.randn(D, W, dtype=wdt, device=dev())
    b = torch.randn(D, dtype=wdt, device=dev()) if bias else None
    idx = pool_indices(B, N) if pool else None
    cs = torch.randint(0, 3 * max(S, 1), (B,), dtype=torch.int32, device=dev()) if circular else None
    ref_state = state.to(torch.float64, copy=True)  # never state itself (float64)
    want = cc.causal_conv1d_update_ref(x.double(), ref_state, w.double(), to_double(b), act, cs, idx)
    before = state.clone()
    got = cc.causal_conv1d_update(x, state, w, b, act, cs, idx)
    msg = (f"seed={seed} B={B} D={D} W={W} S={S} L={L} x={xdt} w={wdt} circular={circular} "
           f"pool={pool} x_layout={x_layout} state_layout={state_layout}")
    assert got.shape == x.shape and got.dtype == xdt, msg
    close(got, want, (xdt, wdt), msg)
    exact(state, ref_state, "conv_state must be bit-exact: " + msg)
    if pool:
        untouched = torch.ones(N, dtype=torch.bool)
        untouched[idx[idx >= 0].long().cpu()] = False
        exact(state[untouched.to(dev())], before[untouched.to(dev())], "unused pool rows: " + msg)
        assert not got[idx < 0].any(), "padding rows must output 0: " + msg


def packed_inputs(lengths, D, dtype, layout, lead=2, tail=3):
    cu = [lead]
    for n in lengths:
        cu.append(cu[-1] + n)
    T = cu[-1] + tail  # tokens outside every sequence, before and after
    cu = torch.tensor(cu, dtype=torch.int32, device=dev())
    g = dict(dtype=dtype, device=dev())
    if layout == "contiguous":
        x = torch.randn(T, D, **g)
    elif layout == "proj_slice":
        x = torch.randn(T, 3 * D, **g)[:, D : 2 * D]
    elif layout == "channels_first":
        x = torch.randn(D, T, **g).t()
    else:
        raise ValueError(layout)
    return x, cu


def packed_case(cc, seed, *, W=4, S=None, D=37, xdt=torch.float32, wdt=torch.float32,
                layout="contiguous", channels_first=False, pad_slot_id=-1, act="silu",
                lengths=(5, 0, 1, 12, 3, 70, 2), bias=True, pool_layout="contiguous"):
    """One packed prefill against the reference; returns the output (in x's
    orientation: (D, T) when channels_first)."""
    S = W - 1 if S is None else S
    B = len(lengths)
    x, cus = packed_inputs(list(lengths), D, xdt, layout)
    N = B + 3
    pool = make_state(N, D, S, xdt, pool_layout)
    idx = torch.randperm(N)[:B].to(torch.int32)
    idx[torch.rand(B) < 0.25] = pad_slot_id
    idx = idx.to(dev())
    has_init = (torch.rand(B) < 0.6).to(dev())
    w = torch.randn(D, W, dtype=wdt, device=dev())
    b = torch.randn(D, dtype=wdt, device=dev()) if bias else None
    ref_pool = pool.to(torch.float64, copy=True)  # never pool itself (float64)
    want = cc.causal_conv1d_packed_fwd_ref(x.double(), w.double(), to_double(b), cus, ref_pool, idx,
                                           has_init, act, pad_slot_id)
    xin = x.t() if channels_first else x
    got = cc.causal_conv1d_packed_fwd(xin, w, b, cus, pool, idx, has_init, act, pad_slot_id,
                                      channels_first)
    if channels_first:
        got = got.t()
    msg = (f"seed={seed} W={W} S={S} x={xdt} w={wdt} layout={layout} cf={channels_first} "
           f"pad={pad_slot_id} lengths={lengths}")
    close(got, want, (xdt, wdt), msg)
    exact(pool, ref_pool, "conv_states must be bit-exact: " + msg)
    return got.t() if channels_first else got


def to_cpu(t):
    return None if t is None else t.cpu()


def skip_unimplemented(fn):
    try:
        return fn()
    except NotImplementedError as e:
        pytest.skip(f"CPU backend: {e}")


# float64 on the CUDA kernels: which of x and weight are float64 in a case.
FLOAT64_CASES = {"x": (torch.float64, torch.float32), "weight": (torch.float32, torch.float64),
                 "both": (torch.float64, torch.float64)}


def assert_float64_refused(kernel, cc, op: str, *args) -> None:
    """kernel.ops.<op>(*args) refuses float64 as the CUDA variant does: the
    TypeError checks.cpp raises for a float64 tensor that is not on the CPU.
    The expected text is what the host's own checks say for the same call on
    meta tensors (not on the CPU either), so on the emulator, whose tensors
    are CPU tensors, this tests its float64 guard against checks.cpp."""
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(TypeError) as want:
        getattr(cc.ops, op)(*meta)
    with pytest.raises(TypeError) as got:
        getattr(kernel.ops, op)(*args)
    first = str(want.value).splitlines()[0]
    assert first.endswith("is float64, which is supported on CPU only"), first
    assert str(got.value).splitlines()[0] == first


# ---------------------------------------------------------------------------
# Loading the kernel, and the backends every op's tests run on

ROOT = Path(__file__).resolve().parent.parent
# The folder whose build/<variant>/ the tests load when LOCAL_KERNELS does not
# name this kernel (default: this checkout).
KERNEL_ROOT = Path(os.environ.get("CAUSAL_CONV1D_KERNEL_ROOT", ROOT))


def _general() -> dict:
    return tomllib.loads((ROOT / "build.toml").read_text())["general"]


def repo_id() -> str:
    """build.toml's [general.hub] repo-id: the name LOCAL_KERNELS maps."""
    return _general()["hub"]["repo-id"]


def local_kernels() -> dict[str, Path]:
    """LOCAL_KERNELS=repo_id=path[:repo_id=path...], as kernels parses it."""
    entries = os.environ.get("LOCAL_KERNELS", "")
    return {k: Path(v) for k, v in (e.split("=", 1) for e in entries.split(":") if "=" in e)}


def load_kernel(root: Path | None = None, backend: str | None = None):
    """The kernel module, through the `kernels` loader as kernel-builder's
    ci-test loads it: kernels.get_kernel(repo-id) where LOCAL_KERNELS maps
    build.toml's repo-id to a build output, else kernels.get_local_kernel on
    `root` (default KERNEL_ROOT). Where `kernels` is not installed (a GPU
    machine without network), the same import by hand: build/<variant>/
    __init__.py under the name metadata.json's "id"."""
    try:
        import kernels
    except ImportError:
        return _load_variant_by_hand(root or KERNEL_ROOT, backend)
    if root is None and repo_id() in local_kernels():
        return kernels.get_kernel(repo_id(), version=_general()["version"], backend=backend)
    return kernels.get_local_kernel(root or KERNEL_ROOT, backend=backend)


def _load_variant_by_hand(root: Path, backend: str | None):
    import importlib.util
    import json
    import platform
    import sys

    backend = backend or ("cuda" if torch.version.cuda else "cpu")
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    tag = f"cu{torch.version.cuda.replace('.', '')}" if backend == "cuda" else "cpu"
    abi = "cxx11" if torch.compiled_with_cxx11_abi() else "cxx98"
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    variant = root / "build" / f"torch{major}{minor}-{abi}-{tag}-{machine}-{sys.platform}"
    if not variant.is_dir():
        variant = root  # the variant folder itself
    name = json.loads((variant / "metadata.json").read_text())["id"]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, variant / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def host_backend_name() -> str:
    """The backend the host's variant runs: CAUSAL_CONV1D_TEST_BACKEND, else
    torch's (a CUDA torch loads the CUDA variant)."""
    return os.environ.get("CAUSAL_CONV1D_TEST_BACKEND") or ("cuda" if torch.version.cuda else "cpu")


@dataclass(frozen=True)
class BackendSpec:
    """One backend the op tests run on, known before anything is loaded.

    name     the test id: "cpu" (or "cpu-<tier>" under CAUSAL_CONV1D_CPU_TIER),
             "cuda", "cuda-emu", or any NAME given in CAUSAL_CONV1D_TEST_BACKENDS
             (e.g. "aarch64")
    kind     which kernels run: "cpu" (cpu/) or "cuda" (cuda/, on a GPU or
             on the emulator)
    device   where its tensors live ("cuda" only on a GPU)
    path     the build to load (None: the host's kernel, the `cc` fixture)
    """

    name: str
    kind: str
    device: str
    path: Path | None = None

    @property
    def emulated(self) -> bool:
        return self.name == "cuda-emu"

    @property
    def float64(self) -> bool:
        return self.kind == "cpu"  # the CUDA kernels refuse float64


def backend_specs() -> list[BackendSpec]:
    """The backends the op tests run on, from CAUSAL_CONV1D_TEST_BACKENDS:
    a ':'-separated list of entries, each `host` (the host's kernel, the
    default) or `NAME=PATH` (a build output, build root or variant folder
    loaded with kernels.get_local_kernel). A NAME starting with "cuda" runs
    the CUDA kernels: "cuda-emu" a build of `tools/build_variant.py
    --backend cuda-emu` on CPU tensors, "cuda" a CUDA variant on the GPU.
    Any other NAME is a CPU variant (e.g. "aarch64" for an aarch64 build).
    On a GPU machine with the host's kernel the CUDA variant, a CPU variant
    found under CAUSAL_CONV1D_CPU_KERNEL_ROOT (default: this checkout) is
    added as "cpu", so one run tests both."""
    specs = []
    entries = os.environ.get("CAUSAL_CONV1D_TEST_BACKENDS", "host").split(":")
    for entry in filter(None, entries):
        if entry == "host":
            kind = host_backend_name()
            # The CPU tier is chosen once per process (cpu/dispatch.cpp), so
            # a tier other than the best is a run of its own: named in the id.
            tier = os.environ.get("CAUSAL_CONV1D_CPU_TIER") if kind == "cpu" else None
            specs.append(BackendSpec(f"cpu-{tier}" if tier else kind, kind, kind))
            if kind == "cuda":
                cpu_root = Path(os.environ.get("CAUSAL_CONV1D_CPU_KERNEL_ROOT", ROOT))
                specs.append(BackendSpec("cpu", "cpu", "cpu", cpu_root))
            continue
        name, _, path = entry.partition("=")
        if not path:
            raise ValueError(f"CAUSAL_CONV1D_TEST_BACKENDS entry {entry!r}: expected host or NAME=PATH")
        kind = "cuda" if name.startswith("cuda") else "cpu"
        device = "cuda" if name == "cuda" else "cpu"
        specs.append(BackendSpec(name, kind, device, Path(path)))
    return specs


@dataclass
class Backend:
    """A loaded backend: its spec and the kernel module."""

    spec: BackendSpec
    module: object

    def __getattr__(self, item):
        return getattr(self.spec, item)


def load_backend(spec: BackendSpec, host_module) -> Backend:
    if spec.path is None:
        return Backend(spec, host_module)
    module = load_kernel(spec.path, backend="cuda" if spec.device == "cuda" else "cpu")
    namespace = str(module.ops.name if hasattr(module.ops, "name") else module.ops)
    want = {"cuda-emu": "_cudaemu_", "cuda": "_cuda_"}.get(spec.name, "_cpu_")
    if want not in namespace:
        raise RuntimeError(f"backend {spec.name}: {spec.path} holds {namespace}, not a {want} build")
    return Backend(spec, module)


def has_float64(value) -> bool:
    """Whether a test parameter is or holds torch.float64."""
    if value is torch.float64:
        return True
    if isinstance(value, (tuple, list)):
        return any(has_float64(v) for v in value)
    return False


# ---------------------------------------------------------------------------
# kernel-builder's CUDA capability rule, restated from its sources (the
# commit flake.lock pins): which archs a CUDA variant's `[kernel.*]` section
# builds for each toolkit. tests/test_build_description.py checks the
# restatement against those sources and build.toml against it;
# tools/test_build_variant.py checks the local builder against it.

# The CUDA versions of kernel-builder's build matrix (nix-builder/versions.nix).
BUILDER_CUDA_VERSIONS = ["12.6", "13.0", "13.2"]

# preamble.cmake: CUDA_DEFAULT_KERNEL_ARCHS by nvcc version, as written there.
# Without "+PTX" they are the capabilities a toolkit builds for.
PREAMBLE_ARCHS = [
    ("13.0", "7.5;8.0;8.6;8.7;8.9;9.0;10.0;11.0;12.0;12.1+PTX"),
    ("12.8", "7.0;7.2;7.5;8.0;8.6;8.7;8.9;9.0;10.0;10.1;12.0+PTX"),
    ("0.0", "7.0;7.2;7.5;8.0;8.6;8.7;8.9;9.0+PTX"),
]


def build_toml() -> dict:
    return tomllib.loads((ROOT / "build.toml").read_text())


def build_toml_capabilities() -> list[str]:
    return [c for s in build_toml().get("kernel", {}).values() if s["backend"] == "cuda"
            for c in s.get("cuda-capabilities", [])]


# The rule, transcribed step by step from utils.cmake


def cmake_version(arch: str) -> tuple[int, ...]:
    """CMake VERSION_* comparison of "X.Y" (suffix letters dropped)."""
    return tuple(int(re.match(r"\d+", part).group()) for part in arch.split("."))


def natural_key(arch: str):
    """list(SORT ... COMPARE NATURAL): digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", arch)]


def toolkit_targets(cuda: str) -> list[str]:
    """cuda_remove_ptx_suffixes(CUDA_DEFAULT_KERNEL_ARCHS) for nvcc `cuda`."""
    for first, archs in PREAMBLE_ARCHS:
        if cmake_version(cuda) >= cmake_version(first):
            return [a.replace("+PTX", "") for a in archs.split(";")]
    raise AssertionError(cuda)


def loose_intersection(src_archs: list[str], tgt_archs: list[str]) -> list[str]:
    """cuda_archs_loose_intersection(OUT SRC TGT)."""
    src, tgt = list(src_archs), list(tgt_archs)
    ptx = []
    for arch in list(src):
        if arch.endswith("+PTX"):
            base = arch.replace("+PTX", "")
            ptx.append(base)
            src.remove(arch)
            src.append(base)
    src = list(dict.fromkeys(src))
    out = []
    for arch in list(src):
        if arch[-1] in "af":
            src.remove(arch)
            if arch[:-1] in tgt_archs:
                tgt.remove(arch[:-1])
                out.append(arch)
    src.sort(key=natural_key)
    for t in tgt:
        tmp = None
        for s in src:
            if cmake_version(s) <= cmake_version(t):
                if s in ptx or s.split(".")[0] == t.split(".")[0]:
                    tmp = s
            else:
                break
        if tmp:
            out.append(tmp)
    out = list(dict.fromkeys(out))
    out = [f"{a}+PTX" if a in ptx else a for a in out]
    return sorted(out, key=natural_key)


def builder_variant(entries: list[str], cuda: str) -> dict:
    """What kernel-builder builds for a CUDA section with these entries."""
    archs = loose_intersection(entries, toolkit_targets(cuda))
    gencode = []
    for arch in archs:
        num = arch.replace("+PTX", "").replace(".", "")
        gencode.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if arch.endswith("+PTX"):
            gencode.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return {
        "sass": [a.replace("+PTX", "") for a in archs],
        "ptx": [a.replace("+PTX", "") for a in archs if a.endswith("+PTX")],
        "archs": sorted(set(archs)),  # add_build_metadata.py
        "gencode": gencode,
    }
