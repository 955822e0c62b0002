"""The worker benchmark's report: which saturation run is read, and how targets are judged (no timing here)."""

from __future__ import annotations

from ops.bench_report import _markdown, saturation
from ops.bench_worker import BenchConfig, RunResult


def _run(label: str, offered: float | None, throughput: float, p99: float = 300.0) -> RunResult:
    return RunResult(label, offered, 100, 100, throughput, throughput, {"p50": 100.0, "p95": 200.0, "p99": p99},
                     {"infer_ms": 4.0, "explain_ms": 0.5, "persist_ms": 1.0}, 10.0, 30.0, 10, 1)


def _report(runs: list[RunResult]) -> str:
    r = {"config": BenchConfig(), "origin": "test records", "results": runs,
         "stages": {k: {"decode_ms": 1, "gate_ms": 1, "preprocess_ms": 1, "infer_ms": 1, "explain_ms": 1,
                        "explained_pairs": 1} for k in ("before", "after")},
         "model_only": [200.0, 250.0, 240.0, 260.0], "bound": 250.0, "load": ((0.1, 0.1, 0.1), (0.2, 0.2, 0.2))}
    return "\n".join(_markdown(r, "plot.png", "python -m ops.bench_worker"))


def test_the_saturation_run_read_is_the_median_one() -> None:
    runs = [_run("20", 20.0, 20.0), _run("max1", None, 200.0), _run("max2", None, 150.0),
            _run("max3", None, 172.0), _run("max-all", None, 100.0)]
    assert saturation(runs).label == "max3"  # 150, 172, 200 (the run explaining every alert is not one)
    text = _report(runs)
    assert "172.0 ECG/s = **69% of the model alone** (target >= 70%): NOT met" in text
    assert "200.0 ECG/s (80%), 150.0 ECG/s (60%), 172.0 ECG/s (69%)" in text
    assert "**250.0 ECG/s**" in text and "200.0, 250.0, 240.0, 260.0 ECG/s" in text
    assert "every alert explained" in text and "**300 ms**" in text and "): met." in text


def test_targets_met_when_the_median_run_reaches_them() -> None:
    runs = [_run("20", 20.0, 20.0, p99=1200.0), _run("max1", None, 190.0)]
    text = _report(runs)
    assert "**76% of the model alone** (target >= 70%): met" in text
    assert "**1200 ms** (target < 1000 ms with max_wait <= 200 ms): NOT met" in text
