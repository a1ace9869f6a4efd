"""Shared test helpers: random inputs in every layout, tolerances, comparison."""

from __future__ import annotations

import torch

# (rtol, atol) per dtype, from the spec (upstream's own tolerances).
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (3e-4, 1e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (1e-2, 5e-2),
}
_PRECISION_ORDER = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

LAYOUTS = ["contiguous", "channel_last", "proj_slice", "strided"]

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


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def tolerance(*dtypes: torch.dtype) -> tuple[float, float]:
    """The loosest tolerance among the dtypes involved."""
    worst = max(dtypes, key=_PRECISION_ORDER.index)
    return TOLERANCES[worst]


def randn_layout(
    B: int, D: int, L: int, layout: str, dtype: torch.dtype, device: str = "cpu"
) -> torch.Tensor:
    """A (B, D, L) random tensor with the given memory layout:

    contiguous    x.stride(2) == 1
    channel_last  (B, L, D) storage viewed as (B, D, L): x.stride(1) == 1
    proj_slice    a channel slice of a wider (B, L, 3D) projection, transposed
    strided       every stride > 1 (a ::2 view of a larger tensor)
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
    raise ValueError(layout)


def random_seq_idx(B: int, L: int, padding: bool = True, device: str = "cpu") -> torch.Tensor:
    """(B, L) int32 segment ids: non-decreasing segments, optionally with
    padding (-1) runs at random places, as packed batches have."""
    rows = []
    for _ in range(B):
        n_seg = int(torch.randint(1, 5, ()).item())
        cuts = torch.sort(torch.randint(0, L + 1, (n_seg - 1,))).values.tolist()
        ids = torch.empty(L, dtype=torch.int32)
        start = 0
        for seg, end in enumerate(cuts + [L]):
            ids[start:end] = seg
            start = end
        if padding and L > 2 and torch.rand(()) < 0.7:
            a = int(torch.randint(0, L, ()).item())
            b = int(torch.randint(a, min(L, a + 4) + 1, ()).item())
            ids[a:b] = -1
        rows.append(ids)
    return torch.stack(rows).to(device)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtypes, msg: str = "") -> None:
    rtol, atol = tolerance(*dtypes)
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}"
    )
