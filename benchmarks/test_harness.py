"""suites/harness.measure, what every CPU table's times come from: samples
of back-to-back calls, or with cold one call after the caches were evicted."""

from __future__ import annotations

import itertools

from suites import harness


def counting(monkeypatch):
    """Calls to two candidates and to evict_caches, in the order made."""
    log = []
    monkeypatch.setattr(harness, "evict_caches", lambda: log.append("evict"))
    fns = {name: (lambda name=name: log.append(name)) for name in ("a", "b")}
    return fns, log


def fake_clock(step):
    """A clock that advances by step at every reading."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


def test_cold_samples_are_single_calls_after_an_eviction(monkeypatch):
    fns, log = counting(monkeypatch)
    r = harness.measure(fns, repeats=3, warmup=2, min_sample_s=1.0, clock=fake_clock(1.0),
                        cold=True)
    timed = log[4:]  # after each candidate's two warmup calls
    assert log[:4] == ["a", "a", "b", "b"]
    assert timed == ["evict", "a", "evict", "b"] * 3
    assert r == {"a": (1.0, 1.0), "b": (1.0, 1.0)}  # one clock step per sample


def test_warm_samples_repeat_calls_and_never_evict(monkeypatch):
    fns, log = counting(monkeypatch)
    r = harness.measure(fns, repeats=2, warmup=0, min_sample_s=1e-3, clock=fake_clock(1.0))
    assert "evict" not in log
    per_sample = (log.count("a") - 1) // 2  # one call sized the samples
    assert per_sample > 1
    assert r["a"] == (1.0 / per_sample, 1.0 / per_sample)


def test_evict_caches_writes_twice_the_largest_cache():
    harness._evict_buffer.clear()
    harness.evict_caches()
    buffer = harness._evict_buffer[0]
    written = buffer.numel() * buffer.element_size()
    assert written >= 2 * max(32 << 20, harness.largest_cache_bytes())
    assert int(buffer[0]) == 1 and int(buffer[-1]) == 1  # every byte written


def test_largest_cache_bytes_reads_sysfs(tmp_path):
    for index, size in enumerate(["48K", "1024K", "32768K", "junk"]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert harness.largest_cache_bytes(tmp_path) == 32 << 20
    assert harness.largest_cache_bytes(tmp_path / "absent") == 0
