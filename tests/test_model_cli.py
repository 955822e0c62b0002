"""`ecgscreen model ...` as people and scripts use it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest
import torch

from ops.cli import main
from ops.feed import malformed_payloads, simulated_records


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "bundle"
    assert main(["model", "init-untrained", str(out), "--base-width", "4", "--rate", "100"]) == 0
    return out


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


def test_info_describes_the_bundle(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["model", "info", str(bundle_dir)]) == 0
    (info,) = lines(capsys)
    assert info["schema_version"] == 3 and info["trained"] is False and info["text"] is None
    assert info["input"]["sampling_rate_hz"] == 100.0 and info["input"]["n_samples"] == 1000  # type: ignore[index]
    assert set(info["files"]) == {"bundle.json", "weights.safetensors", "SHA256SUMS"}  # type: ignore[arg-type]
    task = info["tasks"][0]  # type: ignore[index]
    assert task["head"] == "linear" and task["calibration"] == "none" and "threshold" in task


def test_predict_events_jsonl(bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = [r.encode() for r in simulated_records(3, fs=250.0, seed=2, bases=1)]
    bad = malformed_payloads(good[0])[1][1]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([good[0], bad, *good[1:]]) + b"\n")
    capsys.readouterr()
    assert main(["model", "predict", str(bundle_dir), str(path), "--batch-size", "2"]) == 0
    out = lines(capsys)
    errors = [o for o in out if "error" in o]
    scored = [o for o in out if "scores" in o]
    assert errors == [{"file": str(path), "line": 2, "error": "truncated_base64"}]
    assert [o["event_id"] for o in scored] == ["sim-2-00000", "sim-2-00001", "sim-2-00002"]
    for o in scored:
        assert len(o["scores"]) == 11 and all(0 < v < 1 for v in o["scores"].values())  # type: ignore[union-attr]
        assert o["absent_leads"] == []


def test_predict_ptbxl_npz_and_wfdb(bundle_dir: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npz, csv = shared_data / "ptbxl_folds1-8_100hz.npz", shared_data / "ptbxl_folds1-8_metadata.csv"
    capsys.readouterr()
    assert main(["model", "predict", str(bundle_dir), str(npz), str(csv), "--limit", "3"]) == 0
    assert [o["ecg_id"] for o in lines(capsys)] == [1, 2, 3]
    if importlib.util.find_spec("wfdb") is None:
        pytest.skip("the wfdb package is not installed")
    rec = shared_data / "wfdb" / "ptbxl" / "records500" / "00001_hr"
    assert main(["model", "predict", str(bundle_dir), str(rec)]) == 0
    (o,) = lines(capsys)
    assert o["event_id"] == "wfdb-00001_hr" and len(o["scores"]) == 11  # type: ignore[arg-type]


def test_verify_reports_parity(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["model", "verify", str(bundle_dir), "--engine", "torch-cpu-bf16", "--n", "4"]) == 0
    (r,) = lines(capsys)
    assert r["ok"] is True and r["n"] == 4 and r["tolerance"] == 0.05
    assert 0 <= r["max_abs_diff"] <= 0.05 and set(r["agreement"]) and r["min_agreement"] <= 1.0  # type: ignore[operator, arg-type]
    assert main(["model", "verify", str(bundle_dir), "--engine", "torch-cpu-bf16", "--n", "4", "--atol", "0"]) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: compile would really run")
def test_compile_tensorrt_refused_clearly_here(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "compile", str(bundle_dir), "--engine", "tensorrt"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ecgscreen: engine_unavailable:") and ("TensorRT" in err or "CUDA" in err)


def test_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs and prints a row per cell; timings are printed, never asserted."""
    args = ["model", "bench", "--archs", "r18", "--inputs", "50x500", "--engines", "torch-cpu", "--batches", "2",
            "--base-width", "4", "--warmup", "0", "--reps", "1", "--json"]
    assert main(args) == 0
    (cell,) = lines(capsys)
    assert cell["engine"] == "torch-cpu" and cell["batch"] == 2 and cell["ratio"] == 1.0
    assert cell["ecg_per_s"] > 0 and cell["gflop_per_ecg"] > 0  # type: ignore[operator]
