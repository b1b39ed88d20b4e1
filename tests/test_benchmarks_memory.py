"""benchmarks/bench_cams_memory.py measures each child's own peak RSS, so a smaller later child reports less."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cams_memory.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_cams_memory", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_child_peak_can_go_down():
    bench = _bench()
    big, _ = bench.child_peak_mib("b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])", [])
    small, _ = bench.child_peak_mib("pass", [])
    assert big > 250 and small < big - 200, (big, small)  # the old RUSAGE_CHILDREN maximum would repeat `big`
