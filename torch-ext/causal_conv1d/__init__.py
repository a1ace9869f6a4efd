"""Causal depthwise 1D convolution for Mamba-style models, CPU and CUDA.

    from kernels import get_kernel
    cc = get_kernel("kernels-community/causal-conv1d", version=1)
    y = cc.causal_conv1d_fn(x, weight, bias, activation="silu")

The API follows the causal-conv1d package (1.7) and adds what serving engines
need; reference.py holds the semantics every backend is tested against.
"""

from . import cpp_functions, layers
from ._ops import ops
from .functions import (
    CausalConv1dFn,
    causal_conv1d_fn,
    causal_conv1d_packed_fwd,
    causal_conv1d_update,
    causal_conv1d_varlen_states,
    kernel_tier,
    tree_parents,
)
from .reference import (
    causal_conv1d_packed_fwd_ref,
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    causal_conv1d_varlen_states_ref,
)

__all__ = [
    "CausalConv1dFn",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "causal_conv1d_varlen_states",
    "causal_conv1d_packed_fwd",
    "tree_parents",
    "kernel_tier",
    "causal_conv1d_ref",
    "causal_conv1d_update_ref",
    "causal_conv1d_varlen_states_ref",
    "causal_conv1d_packed_fwd_ref",
    "ops",
    "layers",
    "cpp_functions",
]
