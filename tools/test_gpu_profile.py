"""tools/gpu_profile.py's summary of Nsight Compute's raw CSV, on a
sample laid out as `ncu --csv --page raw --print-units base` writes it (its
own ==PROF== lines around, a header row, a units row, one row per launch).
The profiling itself needs a GPU and ncu (tools/gpu.sh profile)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

import gpu_profile

TOOL = Path(__file__).resolve().parent / "gpu_profile.py"

ROWS_KERNEL = ("void causal_conv1d::cuda::(anonymous namespace)::bwd_rows_tiled_kernel"
               "<__nv_bfloat16, 4, 2, true>(causal_conv1d::ConvParams, long, float *)")
CHANLAST_KERNEL = ("void causal_conv1d::cuda::(anonymous namespace)::bwd_chanlast_kernel"
                   "<float, 4, true, false, true>(causal_conv1d::ConvParams, long, long, int, "
                   "bool, bool, bool, float *)")


def sample_csv(stalls_rows: dict, stalls_chanlast: dict, drop: str | None = None) -> str:
    fixed = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream",
             "Block Size", "Grid Size", "Device", "CC"]
    metrics = [m for m in gpu_profile.METRICS if m != drop]
    values = {
        "gpu__time_duration.sum": ("nsecond", "250,432", "331,020"),
        "dram__throughput.avg.pct_of_peak_sustained_elapsed": ("%", "55.25", "80.5"),
        "sm__inst_issued.avg.pct_of_peak_sustained_active": ("%", "61.04", "35"),
        "sm__warps_active.avg.per_cycle_active": ("warp", "30.2", "15.9"),
        "launch__registers_per_thread": ("register/thread", "96", "119"),
        "launch__occupancy_limit_registers": ("block", "5", "4"),
    }
    out = io.StringIO()
    out.write("==PROF== Connected to process 4242 (/usr/bin/python3.12)\n")
    w = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    w.writerow(fixed + metrics)
    units, row1, row2 = [""] * len(fixed), [], []
    for m in metrics:
        if m in values:
            u, a, b = values[m]
        else:
            stall = m[len(gpu_profile.STALL_PREFIX):-len(gpu_profile.STALL_SUFFIX)]
            u, a, b = "", str(stalls_rows.get(stall, 0)), str(stalls_chanlast.get(stall, 0))
        units.append(u)
        row1.append(a)
        row2.append(b)
    w.writerow(units)
    w.writerow(["0", "4242", "python3.12", "127.0.0.1", ROWS_KERNEL, "1", "7", "(128, 1, 1)",
                "(16384, 1, 1)", "0", "9.0"] + row1)
    w.writerow(["1", "4242", "python3.12", "127.0.0.1", CHANLAST_KERNEL, "1", "7", "(128, 1, 1)",
                "(8192, 1, 1)", "0", "9.0"] + row2)
    out.write("==PROF== Disconnected from process 4242\n")
    return out.getvalue()


@pytest.mark.parametrize("namespace", ["(anonymous namespace)", "<unnamed>"])
def test_short_name(namespace):
    """Both spellings of the anonymous namespace (ncu's demangler writes
    `<unnamed>`), template arguments kept, parameters dropped."""
    name = (f"void causal_conv1d::cuda::{namespace}::fwd_rows_piped_kernel<__nv_bfloat16, 4, 2>"
            "(causal_conv1d::ConvParams, long)")
    assert gpu_profile.short_name(name) == "fwd_rows_piped_kernel<bf16, 4, 2>"
    assert gpu_profile.short_name("k(int)") == "k"


def test_summary_rows_and_top_stalls():
    text = sample_csv({"long_scoreboard": 4.25, "wait": 1.5, "barrier": 0.0, "not_selected": 2.0,
                       "math_pipe_throttle": 0.5},
                      {"barrier": 6.0, "long_scoreboard": 3.0, "short_scoreboard": 0.75})
    table = gpu_profile.summarize(text).splitlines()
    assert len(table) == 4  # header, rule, two launches
    assert table[2].startswith("| bwd_rows_tiled_kernel<bf16, 4, 2, true> | (16384, 1, 1) x (128, 1, 1)"
                               " | 250.4 | 55.2 | 61.0 | 30.2 | 96 | 5 |")
    assert table[2].endswith("| long_scoreboard 4.2, not_selected 2.0, wait 1.5 |")
    assert table[3].startswith("| bwd_chanlast_kernel<float, 4, true, false, true> |")
    assert "| 331.0 | 80.5 | 35.0 | 15.9 | 119 | 4 |" in table[3]
    assert table[3].endswith("| barrier 6.0, long_scoreboard 3.0, short_scoreboard 0.8 |")


def test_summary_missing_counter_and_bad_input():
    text = sample_csv({"long_scoreboard": 1.0}, {}, drop="sm__inst_issued.avg.pct_of_peak_sustained_active")
    row = gpu_profile.summarize(text).splitlines()[2].split(" | ")
    assert row[4] == "-"  # the issue column, not reported by this ncu
    assert gpu_profile.summarize(text).splitlines()[3].endswith("| - |")  # no stall above 0
    with pytest.raises(ValueError, match="no ncu CSV header"):
        gpu_profile.summarize("==PROF== nothing profiled\n")


def test_metrics_command_lists_every_counter():
    out = subprocess.run([sys.executable, str(TOOL), "metrics"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(",") == gpu_profile.METRICS
    assert len(gpu_profile.METRICS) == len(set(gpu_profile.METRICS))
