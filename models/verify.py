"""Engine verification: scores of an engine against eager float32 on the same inputs.

Used by ``ecgscreen model verify`` and the parity tests. Reported: the largest absolute
difference of calibrated probabilities (and of raw logits), and per task the share of
records whose decision (score >= threshold) is the same under both engines. Reduced
precision moves scores a little, so records near a threshold can flip; the agreement says
how often that happens on the sample, the tolerance bounds how far any score moved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.bundle import Bundle
from models.config import InputSpec
from models.engine import Engine, TorchEngine
from models.preprocess import prepare_record

# Largest |probability difference| accepted, by arithmetic. fp32 engines differ from eager only
# by summation order and BN folding; fp16 keeps 10 mantissa bits, bf16 only 8 (so about 4x the
# rounding error of fp16 through ~20 conv layers). Deviations measured here: see the tests.
TOLERANCES: dict[str, float] = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}


def tolerance_for(engine_name: str) -> float:
    if "bf16" in engine_name:
        return TOLERANCES["bf16"]
    if "fp16" in engine_name or "tensorrt" in engine_name:
        return TOLERANCES["fp16"]
    return TOLERANCES["fp32"]


@dataclass(frozen=True)
class VerifyReport:
    engine: str
    n: int
    max_abs_diff: float
    max_abs_logit_diff: float | None
    agreement: dict[str, float]
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, object]:
        return {"engine": self.engine, "n": self.n, "max_abs_diff": self.max_abs_diff,
                "max_abs_logit_diff": self.max_abs_logit_diff, "tolerance": self.tolerance, "ok": self.ok,
                "min_agreement": min(self.agreement.values()), "agreement": self.agreement}


def synthetic_inputs(spec: InputSpec, n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Model-ready ECG-like records: beats (narrow Gaussians) at a random rate plus baseline and noise,
    limb leads consistent with Einthoven/Goldberger, run through the bundle's own preprocessing."""
    rng = np.random.default_rng(seed)
    fs, seconds = 500.0, spec.n_samples / spec.sampling_rate_hz
    t = np.arange(int(fs * seconds)) / fs
    out = []
    for _ in range(n):
        rr = rng.uniform(0.5, 1.2)
        width = rng.uniform(0.01, 0.03)
        beats = sum(np.exp(-(((t - c) / width) ** 2)) for c in np.arange(rng.uniform(0, rr), seconds, rr))
        waves = rng.uniform(-1.5, 1.5, (8, 1)) * beats + 0.1 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5, (8, 1)) * t)
        i, ii, *v = waves + 0.02 * rng.standard_normal((8, t.size))
        sig = np.asarray([i, ii, ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2, *v])
        leads = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
        out.append(prepare_record(sig, fs, leads, spec)[0])
    return np.stack(out)


def verify_engine(bundle: Bundle, engine: Engine, x: np.ndarray) -> VerifyReport:
    """Compare ``engine`` with eager float32 on ``x`` (model-ready (B, L, N))."""
    reference = TorchEngine(bundle, "cpu")
    ref_logits = reference.logits(x)
    got = engine.infer(x)
    ref = bundle.calibrate(ref_logits)
    logit_fn = getattr(engine, "logits", None)
    logit_diff = float(np.abs(logit_fn(x) - ref_logits).max()) if callable(logit_fn) else None
    thresholds = np.array([t.threshold for t in bundle.config.tasks])
    same = (ref >= thresholds) == (got >= thresholds)
    agreement = {tid: float(same[:, j].mean()) for j, tid in enumerate(bundle.task_ids)}
    return VerifyReport(engine.name, int(x.shape[0]), float(np.abs(got - ref).max()), logit_diff, agreement,
                        tolerance_for(engine.name))
