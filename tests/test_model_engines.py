"""Engines behind one protocol: parity with eager float32, bucketing, selection, and GPU engines where present.

Tolerances (absolute, on calibrated probabilities; models/verify.py TOLERANCES):
  float32 engines (BN folding, torch.compile):  1e-4
  fp16 (CUDA autocast, TensorRT):               2e-2
  bf16 (CPU or CUDA autocast):                  5e-2
Measured on this fixture (logits up to ~6): bf16 CPU 4.8e-3 (logits 3.5e-2); torch.compile 4e-7.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.bundle import Bundle, init_untrained_bundle
from models.config import InputSpec
from models.engine import (
    Engine,
    EngineError,
    EngineOptions,
    TorchEngine,
    _BucketedEngine,
    bucket_for,
    make_engine,
)
from models.resnet import fold_batchnorm
from models.verify import TOLERANCES, synthetic_inputs, verify_engine

CUDA = torch.cuda.is_available()
NO_CUDA = "CUDA is not available here (torch.cuda.is_available() is False): GPU engine not exercised"
HAS_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("torch_tensorrt") is not None
NO_TRT = "tensorrt / torch_tensorrt do not import here: the TensorRT engine is not exercised"
SLOW = os.environ.get("ECGSCREEN_SLOW_TESTS") == "1"
NO_SLOW = ("torch.compile needs ~20 s per shape cold on 2 CPU cores (measured); "
           "set ECGSCREEN_SLOW_TESTS=1 to run this parity test")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A small bundle whose BatchNorm statistics are not the defaults, so folding is really tested."""
    b = init_untrained_bundle(tmp_path_factory.mktemp("e") / "b", base_width=8, seed=3)
    with torch.no_grad():
        b.model.train()(torch.randn(16, 12, 1000) * 2 + 0.3)  # moves running mean/var off 0/1
        for m in b.model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)  # also the zero-initialised residual BNs
        b.model.heads.weight.normal_(0, 0.02)  # logits of a few units: scores spread over (0, 1)
    b.model.eval()
    return b


@pytest.fixture(scope="module")
def x(bundle: Bundle) -> np.ndarray:
    return synthetic_inputs(bundle.config.input, 12, seed=1)


def test_bn_folding_is_the_same_function(bundle: Bundle, x: np.ndarray) -> None:
    folded = fold_batchnorm(bundle.model)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in bundle.model.modules())  # original untouched
    with torch.inference_mode():
        a, b = bundle.model(torch.from_numpy(x)), folded(torch.from_numpy(x))
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


def test_cpu_bf16_parity_within_tolerance(bundle: Bundle, x: np.ndarray) -> None:
    engine = make_engine(bundle, "torch-cpu-bf16")
    assert isinstance(engine, Engine) and engine.name == "torch-cpu-bf16"
    report = verify_engine(bundle, engine, x)
    assert report.tolerance == TOLERANCES["bf16"] and report.ok, report
    assert report.max_abs_diff > 0  # it really ran in reduced precision
    assert min(report.agreement.values()) >= 0.9


class _RecordingEngine(_BucketedEngine):
    """Bucketing under test with the eager model inside, recording the shapes it is given."""

    def __init__(self, bundle: Bundle, buckets: tuple[int, ...]) -> None:
        super().__init__(bundle, EngineOptions(buckets=buckets))
        self.name = "recording"
        self.buckets = buckets
        self.seen: list[int] = []

    def _run_bucket(self, x: np.ndarray) -> Any:
        self.seen.append(x.shape[0])
        with torch.inference_mode():
            return bundle_logits(self.bundle, x)


def bundle_logits(bundle: Bundle, x: np.ndarray) -> np.ndarray:
    return bundle.model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(("n", "shapes"), [(1, [1]), (3, [4]), (4, [4]), (5, [8]), (9, [8, 1]), (19, [8, 8, 4])])
def test_batches_are_padded_to_buckets_and_split(bundle: Bundle, x: np.ndarray, n: int, shapes: list[int]) -> None:
    batch = np.concatenate([x, x])[:n]
    engine = _RecordingEngine(bundle, (1, 2, 4, 8))
    got = engine.infer(batch)
    assert engine.seen == shapes and got.shape == (n, len(bundle.task_ids))
    np.testing.assert_allclose(got, make_engine(bundle, "torch-cpu").infer(batch), atol=1e-6)
    assert bucket_for(3, (1, 2, 4, 8)) == 4


def test_auto_picks_best_available_and_says_why(bundle: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ecgscreen.engine"):
        engine = make_engine(bundle, "auto", EngineOptions(cuda_graphs=False))
    record = next(r for r in caplog.records if r.getMessage() == "engine chosen")
    if not CUDA:
        assert engine.name == "torch-cpu"
        assert "tensorrt" in record.reason and "torch-cuda" in record.reason  # type: ignore[attr-defined]
    assert record.engine == engine.name  # type: ignore[attr-defined]


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the refusal is not what happens here")
def test_gpu_engines_refused_clearly_without_gpu(bundle: Bundle) -> None:
    with pytest.raises(EngineError) as exc:
        make_engine(bundle, "torch-cuda")
    assert exc.value.reason == "engine_unavailable" and "CUDA is not available" in exc.value.detail
    with pytest.raises(EngineError) as exc:
        make_engine(bundle, "tensorrt")
    assert exc.value.reason == "engine_unavailable"


def test_engine_options_validated() -> None:
    with pytest.raises(EngineError):
        EngineOptions(buckets=(4, 2))
    with pytest.raises(EngineError):
        EngineOptions(precision="int8")  # type: ignore[arg-type]


@pytest.mark.skipif(not SLOW, reason=NO_SLOW)
def test_cpu_compile_parity(bundle: Bundle, x: np.ndarray) -> None:
    engine = make_engine(bundle, "torch-cpu-compile", EngineOptions(buckets=(16,)))
    report = verify_engine(bundle, engine, x)
    assert report.tolerance == TOLERANCES["fp32"] and report.ok, report


# --- GPU engines: run only where the hardware and libraries are --------------------------------


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_parity(bundle: Bundle, x: np.ndarray, precision: str, graphs: bool) -> None:
    opts = EngineOptions(buckets=(1, 4, 16), precision=precision, cuda_graphs=graphs)  # type: ignore[arg-type]
    engine = make_engine(bundle, "torch-cuda", opts)
    for n in (1, 3, 12):  # exercise padding into three buckets
        report = verify_engine(bundle, engine, x[:n])
        assert report.ok, report


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_cuda_500hz_r34_bundle(tmp_path: Path) -> None:
    b = init_untrained_bundle(tmp_path / "b", arch="r34", base_width=8, input_spec=InputSpec(500.0, 5000))
    xs = synthetic_inputs(b.config.input, 5)
    assert verify_engine(b, make_engine(b, "torch-cuda", EngineOptions(buckets=(2, 8))), xs).ok


@pytest.mark.skipif(not (CUDA and HAS_TRT), reason=NO_TRT if CUDA else NO_CUDA)
def test_tensorrt_compiles_caches_and_matches(bundle: Bundle, x: np.ndarray, tmp_path: Path) -> None:
    opts = EngineOptions(buckets=(1, 2, 4, 16), cache_dir=tmp_path / "trt", opt_batch=4)
    first = make_engine(bundle, "tensorrt", opts)
    path = first.cache_path  # type: ignore[attr-defined]
    assert path.is_file() and path.with_suffix(".json").is_file()
    stamp = path.stat().st_mtime_ns
    second = make_engine(bundle, "tensorrt", opts)  # reloaded, not recompiled
    assert second.cache_path == path and path.stat().st_mtime_ns == stamp  # type: ignore[attr-defined]
    for n in (1, 3, 12):  # batch 1 padded to the TensorRT minimum of 2
        assert verify_engine(bundle, second, x[:n]).ok


def test_reference_engine_is_eager_float32(bundle: Bundle, x: np.ndarray) -> None:
    ref = TorchEngine(bundle)
    with torch.inference_mode():
        expected = bundle.calibrate(bundle.model(torch.from_numpy(x)).numpy())
    np.testing.assert_array_equal(ref.infer(x), expected)
    report = verify_engine(bundle, ref, x)
    assert report.max_abs_diff == 0.0 and min(report.agreement.values()) == 1.0


def test_tensorrt_cache_key_and_manifest_logic(bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache bookkeeping runs without a GPU: keyed by bundle, GPU and versions; manifest checked."""
    import hashlib
    import types

    import orjson

    import models.trt as trt

    fake = (types.SimpleNamespace(__version__="2.9.0"), types.SimpleNamespace(__version__="10.13.0"))
    monkeypatch.setattr(trt, "_import_tensorrt", lambda: fake)
    monkeypatch.setattr(trt, "_gpu", lambda device: "NVIDIA H100 80GB HBM3 (sm_90)")
    opts = EngineOptions(cache_dir=tmp_path)
    path, key = trt.cache_entry(bundle, opts)
    assert path.parent == tmp_path and key["bundle_sha256"] == bundle.sha256
    assert key["batch"] == [2, 32, 64] and key["tensorrt"] == "10.13.0" and key["input_shape"] == [12, 1000]
    assert trt.cache_entry(bundle, EngineOptions(cache_dir=tmp_path, precision="bf16"))[0] != path
    monkeypatch.setattr(trt, "_gpu", lambda device: "NVIDIA A100-SXM4-80GB (sm_80)")
    assert trt.cache_entry(bundle, opts)[0] != path  # another GPU: another program
    path.write_bytes(b"compiled program")
    assert not trt._manifest_ok(path, key)  # no manifest yet: a half-written entry is not used
    manifest = {"key": key, "sha256": hashlib.sha256(b"compiled program").hexdigest()}
    path.with_suffix(".json").write_bytes(orjson.dumps(manifest))
    assert trt._manifest_ok(path, key)
    path.write_bytes(b"compiled program, truncated")
    assert not trt._manifest_ok(path, key)
