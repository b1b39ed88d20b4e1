"""benchmarks/refine.py fails when a refiner crashes; only a missing optional extra is a skipped row."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from weakseg.errors import missing_extra
from weakseg.refine import pseudo

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "refine.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_refine", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("refine_bench")


def _boom(*args, **kwargs):
    raise RuntimeError("refiner bug")


def _no_crf(*args, **kwargs):
    raise missing_extra("pydensecrf2", "crf", "dense CRF refinement")


def test_refiner_exception_fails_the_benchmark(work, monkeypatch):
    monkeypatch.setitem(pseudo.REFINERS, "par", _boom)
    with pytest.raises(RuntimeError, match="refiner bug"):
        _bench().main(["--n", "2", "--work", str(work)])


def test_missing_extra_is_a_skipped_row(work, monkeypatch, capsys):
    monkeypatch.setitem(pseudo.REFINERS, "crf", _no_crf)
    _bench().main(["--n", "2", "--work", str(work)])
    out = capsys.readouterr().out
    assert "crf" in out and "skipped (optional extra missing)" in out and "pydensecrf2" in out
    assert "throughput ratio" not in out  # no CRF row to compare with
