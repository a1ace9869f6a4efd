"""Whole transformers models on CPU: this kernel against transformers' own
PyTorch fallback, in the same run, on the same random weights.

Models (random weights, no download): the shapes of the Mamba 130M / 1.4B
and Mamba2 130M / 1.3B checkpoints, and the hybrid LFM2 350M (convolution
blocks between attention blocks, no activation after the conv). For each,
with transformers' fallback ("torch") and kernelized onto this
repository's layers causal_conv1d_fn / causal_conv1d_update ("kernel"):

  prefill   tokens/s of model(ids) at B = 1, L = 512 and 2048
  decode    tokens/s of one-token steps at B = 1 and 8 (generate, the
            prefill subtracted)
  conv %    the share of that time spent inside the two convolution
            functions (forward hooks on transformers' function modules),
            so the table says what the kernel can change: the rest is the
            scan, projections and attention, which this kernel does not touch

Times are medians of --repeats runs, candidates alternating.

    python benchmarks/bench.py e2e                     # the README table
    python benchmarks/bench.py e2e --models mamba-130m --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import torch

from .harness import ROOT, load_kernel  # noqa: F401  (load_kernel: the same build the tests use)

LAYERS = ("causal_conv1d_fn", "causal_conv1d_update")
# The build kernelize maps to: the one harness.load_kernel loads.
KERNEL_ROOT = Path(os.environ.get("CAUSAL_CONV1D_KERNEL_ROOT", ROOT))


def configs(quick: bool) -> dict:
    import transformers as t

    if quick:  # smoke run: tiny versions of the same three families
        return {
            "mamba-tiny": (t.MambaForCausalLM, t.MambaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2)),
            "mamba2-tiny": (t.Mamba2ForCausalLM, t.Mamba2Config(
                vocab_size=256, hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16,
                state_size=16, n_groups=1, chunk_size=16)),
            "lfm2-tiny": (t.Lfm2ForCausalLM, t.Lfm2Config(
                vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention"])),
        }
    lfm2_layers = ["conv", "conv", "full_attention"] * 5 + ["conv"]
    return {
        "mamba-130m": (t.MambaForCausalLM, t.MambaConfig(
            vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, conv_kernel=4)),
        "mamba-1.4b": (t.MambaForCausalLM, t.MambaConfig(
            vocab_size=50280, hidden_size=2048, num_hidden_layers=48, state_size=16, expand=2, conv_kernel=4)),
        "mamba2-130m": (t.Mamba2ForCausalLM, t.Mamba2Config(
            vocab_size=50288, hidden_size=768, num_hidden_layers=24, state_size=128, expand=2,
            head_dim=64, num_heads=24, n_groups=1, conv_kernel=4, chunk_size=256)),
        "mamba2-1.3b": (t.Mamba2ForCausalLM, t.Mamba2Config(
            vocab_size=50288, hidden_size=2048, num_hidden_layers=48, state_size=128, expand=2,
            head_dim=64, num_heads=64, n_groups=1, conv_kernel=4, chunk_size=256)),
        "lfm2-350m": (t.Lfm2ForCausalLM, t.Lfm2Config(
            vocab_size=65536, hidden_size=1024, intermediate_size=6656, num_hidden_layers=16,
            num_attention_heads=16, num_key_value_heads=8, conv_L_cache=3, layer_types=lfm2_layers)),
    }


class ConvClock:
    """Wall time spent inside transformers' convolution function modules."""

    def __init__(self, model):
        self.total = 0.0
        self._start = 0.0
        funcs = {id(f): f for m in model.modules()
                 for name, f in (getattr(m, "_kernel_funcs", None) or {}).items() if name in LAYERS}
        self.funcs = list(funcs.values())
        for f in self.funcs:
            f.register_forward_pre_hook(self._enter)
            f.register_forward_hook(self._leave)

    def _enter(self, *_):
        self._start = time.perf_counter()

    def _leave(self, *_):
        self.total += time.perf_counter() - self._start


@contextlib.contextmanager
def kernelized(model, funcs):
    """Our layers in place of transformers' fallbacks; undone on exit
    (kernelize patches transformers' module-level function objects)."""
    from kernels import LocalLayerRepository, Mode, kernelize, use_kernel_mapping

    mapping = {name: {"cpu": LocalLayerRepository(KERNEL_ROOT, layer_name=name)} for name in LAYERS}
    try:
        with use_kernel_mapping(mapping, inherit_mapping=False):
            kernelize(model, mode=Mode.INFERENCE, device="cpu")
        yield
    finally:
        for f in funcs:
            f.__dict__.pop("forward", None)


def timed(fn, clock: ConvClock) -> tuple[float, float]:
    clock.total = 0.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, clock.total


def run_model(name, cls, config, args) -> list[dict]:
    torch.manual_seed(0)
    model = cls(config).eval()
    clock = ConvClock(model)
    vocab = config.vocab_size
    rows = []
    cases = [("prefill", 1, L) for L in args.prefill_lengths] + [("decode", B, None) for B in args.decode_batches]
    for kind, B, L in cases:
        ids = torch.randint(0, vocab, (B, L if L else args.decode_prompt))
        if kind == "prefill":
            def step():
                return model(ids, use_cache=False)
            tokens = B * L
        else:
            n = args.decode_steps

            def step():
                return model.generate(ids, max_new_tokens=n + 1, min_new_tokens=n + 1, do_sample=False)

            def first():
                return model.generate(ids, max_new_tokens=1, do_sample=False)
            tokens = B * n
        samples = {"torch": [], "kernel": []}
        with torch.no_grad():
            for _ in range(args.warmup + args.repeats):
                for who in ("torch", "kernel"):
                    ctx = kernelized(model, clock.funcs) if who == "kernel" else contextlib.nullcontext()
                    with ctx:
                        t, conv = timed(step, clock)
                        if kind == "decode":  # the prefill and first token are not decode steps
                            t0, conv0 = timed(first, clock)
                            t, conv = t - t0, conv - conv0
                    samples[who].append((t, conv))
        row = {"model": name, "kind": kind, "B": B, "L": L}
        for who, vals in samples.items():
            vals = vals[args.warmup:]
            t = statistics.median(v[0] for v in vals)
            conv = statistics.median(v[1] for v in vals)
            row[who] = (tokens / t, 100.0 * conv / t)
        rows.append(row)
        print_row(row, flush=True)
    return rows


def print_row(r, flush=False):
    what = f"L={r['L']}" if r["kind"] == "prefill" else f"B={r['B']}"
    (t_tps, t_conv), (k_tps, k_conv) = r["torch"], r["kernel"]
    print(f"| {r['model']} | {r['kind']} {what} | {t_tps:,.1f} | {t_conv:.1f}% | {k_tps:,.1f} | "
          f"{k_conv:.1f}% | {k_tps / t_tps:.2f}x |", flush=flush)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="subset of the model names")
    ap.add_argument("--quick", action="store_true", help="tiny models, short sequences (smoke run)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prefill-lengths", type=int, nargs="*", help="default 512 2048")
    ap.add_argument("--decode-batches", type=int, nargs="*", help="default 1 8")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prefill_lengths is None:
        args.prefill_lengths = [32] if args.quick else [512, 2048]
    if args.decode_batches is None:
        args.decode_batches = [1, 2] if args.quick else [1, 8]
    args.decode_prompt = 8 if args.quick else 32
    args.decode_steps = 4 if args.quick else 32
    if args.quick:
        args.repeats, args.warmup = 1, 0
    load_kernel()  # fails early, with the loader's message, if build/ lacks this host's variant
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32, medians of {args.repeats}")
    print("| model | step | torch tok/s | torch conv % | kernel tok/s | kernel conv % | speedup |")
    print("|---|---|---|---|---|---|---|")
    for name, (cls, config) in configs(args.quick).items():
        if args.models and name not in args.models:
            continue
        run_model(name, cls, config, args)
    return 0
