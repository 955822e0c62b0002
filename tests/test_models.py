"""models/: configs, catalog, ResNet1d, ECGCLIP signal model, bundles, preprocessing, engines."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.bundle import (
    BundleError,
    init_untrained_bundle,
    load_bundle,
    save_bundle,
    untrained_config,
)
from models.catalog import CATALOG, catalog_task, catalog_tasks, default_tasks
from models.config import (
    STANDARD_LEADS,
    BundleConfig,
    EncoderConfig,
    InputSpec,
    ModelConfigError,
    TaskSpec,
)
from models.ecgclip import ECGCLIPSignalModel
from models.engine import EngineError, make_engine
from models.preprocess import PreprocessError, prepare_batch, prepare_many, prepare_record
from models.resnet import ResNet1d
from schemas.messages import ModelRef, TaskGroup

SMALL = 8  # base_width for fast tests
SPEC_100 = InputSpec(sampling_rate_hz=100.0, n_samples=1000)
SPEC_500 = InputSpec(sampling_rate_hz=500.0, n_samples=5000)


# --- helpers -----------------------------------------------------------------------------------


def small_bundle(path: Path, seed: int = 0, **kw: Any) -> Any:
    return init_untrained_bundle(path, seed=seed, base_width=SMALL, **kw)


def rehash(bundle_dir: Path) -> None:
    """Rewrite SHA256SUMS after a deliberate edit, so the check under test is not the hash check."""
    names = sorted(p.name for p in bundle_dir.iterdir() if p.name != "SHA256SUMS")
    lines = [f"{hashlib.sha256((bundle_dir / n).read_bytes()).hexdigest()}  {n}\n" for n in names]
    (bundle_dir / "SHA256SUMS").write_text("".join(lines))


def edit_config(bundle_dir: Path, mutate: Callable[[dict[str, Any]], None]) -> None:
    raw = orjson.loads((bundle_dir / "bundle.json").read_bytes())
    mutate(raw)
    (bundle_dir / "bundle.json").write_bytes(orjson.dumps(raw))
    rehash(bundle_dir)


def refused(bundle_dir: Path) -> str:
    with pytest.raises(BundleError) as exc:
        load_bundle(bundle_dir)
    return exc.value.reason


def limb_12_lead(fs: float, seconds: float, seed: int = 0) -> np.ndarray:
    """Synthetic noisy 12-lead record whose limb leads obey Einthoven/Goldberger exactly."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    beats = sum(np.exp(-(((t - c) / 0.02) ** 2)) for c in np.arange(0.3, seconds, 0.8))
    waves = [a * beats + b * np.sin(2 * np.pi * f * t) for a, b, f in rng.uniform(0.2, 1.5, (8, 3))]
    i, ii, *v = np.asarray(waves) + 0.01 * rng.standard_normal((8, t.size))
    return np.asarray([i, ii, ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2, *v], dtype=np.float64)


# --- configs and catalog -----------------------------------------------------------------------


def test_config_round_trip_is_exact() -> None:
    cfg = untrained_config("r34", SPEC_500, catalog_tasks(), base_width=SMALL)
    raw = orjson.loads(orjson.dumps(cfg.to_dict()))
    assert BundleConfig.from_dict(raw) == cfg


@pytest.mark.parametrize("where", ["top", "encoder", "input", "task"])
def test_config_unknown_key_refused(where: str) -> None:
    raw = untrained_config(base_width=SMALL).to_dict()
    target = {"top": raw, "encoder": raw["encoder"], "input": raw["input"], "task": raw["tasks"][0]}[where]
    target["typo_key"] = 1
    with pytest.raises(ModelConfigError) as exc:
        BundleConfig.from_dict(raw)
    assert exc.value.reason == "invalid_config" and "typo_key" in exc.value.detail


@pytest.mark.parametrize(
    "bad",
    [
        lambda: EncoderConfig(arch="r50"),  # type: ignore[arg-type]
        lambda: EncoderConfig(kernel=6),
        lambda: EncoderConfig(base_width=True),
        lambda: InputSpec(100.0, 1000, bandpass_hz=(40.0, 0.5)),
        lambda: InputSpec(100.0, 1000, leads=("I", "i")),
        lambda: TaskSpec("echo.afib", "AF", TaskGroup.ECG, 0.5, True),
        lambda: TaskSpec("ecg.afib", "AF", TaskGroup.ECG, 1.5, True),
    ],
)
def test_config_values_validated(bad: Callable[[], object]) -> None:
    with pytest.raises(ModelConfigError):
        bad()


def test_bandpass_clipped_below_nyquist() -> None:
    eff = InputSpec(50.0, 500).effective_bandpass_hz
    assert eff is not None and eff[0] == 0.5 and eff[1] < 25.0


def test_catalog_covers_required_tasks() -> None:
    ids = [t.id for t in CATALOG]
    assert len(ids) == len(set(ids))
    for tid in ["ecg.norm", "ecg.mi", "ecg.sttc", "ecg.cd", "ecg.hyp", "ecg.afib", "ecg.lvh", "ecg.clbbb",
                "ecg.crbbb", "ecg.1avb", "ecg.pace", "echo.lvef_le_40", "echo.lvef_le_50", "echo.hcm",
                "echo.any_shd", "rare.ebstein", "rare.amyloidosis", "rare.dextrocardia"]:  # fmt: skip
        assert catalog_task(tid).prevalence is not None
    assert not catalog_task("ecg.norm").alert and not catalog_task("ecg.pace").alert
    assert len(catalog_tasks(TaskGroup.ECHO)) == 16 and len(catalog_tasks(TaskGroup.RARE)) == 4
    with pytest.raises(ModelConfigError) as exc:
        catalog_task("ecg.nope")
    assert exc.value.reason == "unknown_task"


def test_light_modules_do_not_import_torch() -> None:
    code = ("import sys, models.config, models.catalog, models.preprocess, models.calibration, models.tokenizer; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- networks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "n"), [("r18", 1000), ("r34", 1000), ("r18", 5000), ("r34", 777)])
def test_forward_shapes(arch: str, n: int) -> None:
    cfg = EncoderConfig(arch=arch, base_width=SMALL, embed_dim=32)  # type: ignore[arg-type]
    model = ECGCLIPSignalModel(cfg, n_tasks=5).eval()
    x = torch.randn(2, 12, n)
    with torch.no_grad():
        assert ResNet1d(cfg)(x).shape == (2, 8 * SMALL)
        emb = model.encode_signal(x)
        assert emb.shape == (2, 32)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
        assert model(x).shape == (2, 5)


def test_r34_is_deeper_than_r18() -> None:
    def n_params(arch: str) -> int:
        m = ECGCLIPSignalModel(EncoderConfig(arch=arch, base_width=SMALL), 3)  # type: ignore[arg-type]
        return sum(p.numel() for p in m.parameters())

    assert n_params("r34") > 1.5 * n_params("r18")


# --- bundles -----------------------------------------------------------------------------------


def test_bundle_round_trip_identical_scores(tmp_path: Path) -> None:
    cfg = untrained_config("r18", SPEC_100, default_tasks(), base_width=SMALL)
    torch.manual_seed(1)
    model = ECGCLIPSignalModel.from_config(cfg)
    model.train()(torch.randn(4, 12, 1000))  # move BN running stats off their defaults
    sha = save_bundle(tmp_path / "b", cfg, model.eval())
    loaded = load_bundle(tmp_path / "b")
    assert loaded.sha256 == sha and loaded.config == cfg and not loaded.model.training
    assert loaded.ref == ModelRef("ecgclip-r18", "0.0.0-untrained", sha, False)
    assert loaded.task_ids == cfg.task_ids
    x = np.random.default_rng(0).standard_normal((3, 12, 1000)).astype(np.float32)
    with torch.inference_mode():
        expected = loaded.calibrate(model(torch.from_numpy(x)).numpy())  # no calibration: plain sigmoid
    np.testing.assert_allclose(expected, torch.sigmoid(model(torch.from_numpy(x))).detach().numpy(), atol=1e-6)
    np.testing.assert_array_equal(make_engine(loaded, "torch-cpu").infer(x), expected)
    np.testing.assert_array_equal(make_engine(load_bundle(tmp_path / "b"), "torch-cpu").infer(x), expected)


def test_tampered_weights_refused(tmp_path: Path) -> None:
    b = small_bundle(tmp_path / "b")
    w = b.path / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0x01
    w.write_bytes(bytes(data))
    assert refused(b.path) == "hash_mismatch"


def test_tampered_config_and_extra_file_refused(tmp_path: Path) -> None:
    b = small_bundle(tmp_path / "b")
    (b.path / "bundle.json").write_bytes((b.path / "bundle.json").read_bytes().replace(b"0.4", b"0.9"))
    assert refused(b.path) == "hash_mismatch"
    c = small_bundle(tmp_path / "c")
    (c.path / "notes.txt").write_text("unlisted")
    assert refused(c.path) == "hash_mismatch"


def test_missing_file_refused(tmp_path: Path) -> None:
    b = small_bundle(tmp_path / "b")
    (b.path / "weights.safetensors").unlink()
    assert refused(b.path) == "missing_file"
    assert refused(tmp_path / "nowhere") == "missing_file"


def test_unknown_schema_version_refused(tmp_path: Path) -> None:
    b = small_bundle(tmp_path / "b")
    edit_config(b.path, lambda raw: raw.update(schema_version=99, new_field="x"))
    assert refused(b.path) == "unsupported_version"
    with pytest.raises(BundleError) as exc:
        load_bundle(b.path)
    assert "99" in exc.value.detail and "[1, 2, 3]" in exc.value.detail
    c = small_bundle(tmp_path / "c")
    edit_config(c.path, lambda raw: raw.update(schema_version=True))  # JSON true is not version 1
    assert refused(c.path) == "unsupported_version"


def test_v1_bundle_still_loads(tmp_path: Path) -> None:
    """A v1 bundle (no text tower, all-linear heads, v1 keys only) loads and scores as before."""
    b = small_bundle(tmp_path / "b")

    def to_v1(raw: dict[str, Any]) -> None:
        raw["schema_version"] = 1
        del raw["text"]
        for t in raw["tasks"]:
            for key in ("head", "prompt", "negative_prompt", "calibration", "target", "label_source"):
                del t[key]

    edit_config(b.path, to_v1)
    v1 = load_bundle(b.path)
    assert v1.config.schema_version == 1 and v1.config.linear_tasks == tuple(range(len(v1.task_ids)))
    x = np.zeros((1, 12, 1000), np.float32)
    np.testing.assert_array_equal(make_engine(v1, "torch-cpu").infer(x), make_engine(b, "torch-cpu").infer(x))


def test_required_task_missing_refused(tmp_path: Path) -> None:
    b = small_bundle(tmp_path / "b")
    assert load_bundle(b.path, required_tasks=("ecg.afib",)).task_ids == b.task_ids
    with pytest.raises(BundleError) as exc:
        load_bundle(b.path, required_tasks=("ecg.afib", "echo.hcm"))
    assert exc.value.reason == "missing_task" and "echo.hcm" in exc.value.detail


def test_unknown_key_in_bundle_refused(tmp_path: Path) -> None:
    b = small_bundle(tmp_path / "b")
    edit_config(b.path, lambda raw: raw["encoder"].update(dropout=0.1))
    assert refused(b.path) == "invalid_config"


def test_shape_mismatch_refused(tmp_path: Path) -> None:
    b = small_bundle(tmp_path / "b")
    edit_config(b.path, lambda raw: raw["encoder"].update(base_width=2 * SMALL))
    assert refused(b.path) == "shape_mismatch"
    c = small_bundle(tmp_path / "c")
    edit_config(c.path, lambda raw: raw["tasks"].pop())  # one head too many in the weights
    assert refused(c.path) == "shape_mismatch"


def test_save_refuses_mismatched_model_and_existing_dir(tmp_path: Path) -> None:
    cfg = untrained_config(base_width=SMALL)
    wrong = ECGCLIPSignalModel(EncoderConfig(base_width=SMALL), n_tasks=len(cfg.tasks) + 1)
    with pytest.raises(BundleError) as exc:
        save_bundle(tmp_path / "b", cfg, wrong)
    assert exc.value.reason == "shape_mismatch" and not (tmp_path / "b").exists()
    small_bundle(tmp_path / "c")
    with pytest.raises(BundleError) as exc:
        small_bundle(tmp_path / "c", seed=1)
    assert exc.value.reason == "already_exists"
    assert small_bundle(tmp_path / "c", seed=1, overwrite=True).sha256 == load_bundle(tmp_path / "c").sha256


def test_untrained_bundle_deterministic_and_marked(tmp_path: Path) -> None:
    a = init_untrained_bundle(tmp_path / "a")  # defaults: R18, base 64, 100 Hz x 1000, seed 0
    b = init_untrained_bundle(tmp_path / "b")
    assert a.sha256 == b.sha256 and a.ref.trained is False
    assert a.config.version == "0.0.0-untrained" and a.config.provenance["kind"] == "untrained"
    assert {t.group for t in a.config.tasks} == {TaskGroup.ECG}
    assert (a.config.input.sampling_rate_hz, a.config.input.n_samples) == (100.0, 1000)
    assert a.config.input.leads == STANDARD_LEADS
    assert small_bundle(tmp_path / "c", seed=0).sha256 != small_bundle(tmp_path / "d", seed=1).sha256


# --- preprocessing -----------------------------------------------------------------------------

EIGHT = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


@pytest.mark.parametrize("spec", [SPEC_500, SPEC_100], ids=["500Hz", "100Hz"])
def test_eight_lead_event_gets_derived_limb_leads(spec: InputSpec) -> None:
    full = limb_12_lead(250.0, 10.0)
    eight = full[[STANDARD_LEADS.index(n) for n in EIGHT]]
    x8, absent8 = prepare_record(eight, 250.0, EIGHT, spec)
    x12, absent12 = prepare_record(full, 250.0, STANDARD_LEADS, spec)
    assert x8.shape == (12, spec.n_samples) and x8.dtype == np.float32
    assert absent8 == absent12 == ()
    np.testing.assert_allclose(x8, x12, atol=1e-4)
    np.testing.assert_allclose(x8.std(axis=1), 1.0, atol=1e-3)


def test_masked_and_missing_leads_zeroed_and_reported() -> None:
    full = limb_12_lead(500.0, 10.0)
    x, absent = prepare_record(full, 500.0, STANDARD_LEADS, SPEC_500, masked_leads={"V3", "i"})
    assert absent == ("I", "V3")  # stored III..aVF are used as they are
    assert not x[[0, 8]].any()
    np.testing.assert_allclose(np.delete(x, [0, 8], axis=0).std(axis=1), 1.0, atol=1e-3)
    eight = full[[STANDARD_LEADS.index(n) for n in EIGHT]]
    x, absent = prepare_record(eight, 500.0, EIGHT, SPEC_100, masked_leads=("I",))
    # A masked I cannot feed derivations either: III, aVR, aVL, aVF would carry its artefact.
    assert absent == ("I", "III", "aVR", "aVL", "aVF")
    assert not x[[0, 2, 3, 4, 5]].any() and x[1].std() == pytest.approx(1.0, abs=1e-3)
    chest = full[6:]
    _, absent = prepare_record(chest, 500.0, STANDARD_LEADS[6:], SPEC_100)
    assert absent == STANDARD_LEADS[:6]


@pytest.mark.parametrize(("fs_in", "spec"), [(360.0, SPEC_100), (250.0, SPEC_500), (1000.0, SPEC_100)])
def test_sine_survives_resampling_at_right_frequency(fs_in: float, spec: InputSpec) -> None:
    f0, seconds = 7.0, 12.0
    t = np.arange(int(fs_in * seconds)) / fs_in
    sig = np.tile(np.sin(2 * np.pi * f0 * t), (12, 1))
    raw = dataclasses.replace(spec, normalisation="none")
    x, _ = prepare_record(sig, fs_in, STANDARD_LEADS, raw)
    spectrum = np.abs(np.fft.rfft(x[0]))
    freqs = np.fft.rfftfreq(spec.n_samples, d=1 / spec.sampling_rate_hz)
    assert freqs[spectrum.argmax()] == pytest.approx(f0, abs=0.1)
    assert x[0].std() == pytest.approx(1 / np.sqrt(2), rel=0.02)  # passband gain ~1


def test_short_record_padded_at_end() -> None:
    x, _ = prepare_record(limb_12_lead(100.0, 4.0), 100.0, STANDARD_LEADS, SPEC_100)
    assert not x[:, 400:].any()
    np.testing.assert_allclose(x[:, :400].std(axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize(
    ("sig", "fs", "leads"),
    [
        (np.full((2, 100), np.nan), 100.0, ("I", "II")),
        (np.zeros((3, 100)), 100.0, ("I", "II")),
        (np.zeros((2, 100)), 0.0, ("I", "II")),
        (np.zeros((2, 100)), 100.0, ("I", "i")),
    ],
)
def test_invalid_signal_refused(sig: np.ndarray, fs: float, leads: tuple[str, ...]) -> None:
    with pytest.raises(PreprocessError) as exc:
        prepare_record(sig, fs, leads, SPEC_100)
    assert exc.value.reason == "invalid_signal"


def test_prepare_batch_shapes() -> None:
    x, absent = prepare_batch([], SPEC_100)
    assert x.shape == (0, 12, 1000) and absent == []
    rec = (limb_12_lead(500.0, 10.0)[:8], 500.0, STANDARD_LEADS[:8], ())
    x, absent = prepare_batch([rec, rec], SPEC_100)
    assert x.shape == (2, 12, 1000) and absent == [("V3", "V4", "V5", "V6")] * 2


@pytest.mark.parametrize("spec", [SPEC_100, InputSpec(sampling_rate_hz=100.0, n_samples=1000,
                                                        normalisation="per_lead_zscore")])
def test_prepare_many_groups_match_each_record_alone(spec: InputSpec) -> None:
    """The vectorised path (one transform per rate and length) gives each record exactly the row it
    gets alone, whatever shares its batch; a bad record is refused alone and its row stays zero."""
    rng = np.random.default_rng(3)
    recs = [(rng.normal(0, 1, (12, int(fs * sec))), fs, STANDARD_LEADS, masked)
            for fs, sec, masked in [(500.0, 10, ()), (100.0, 10, ("V2",)), (500.0, 10, ("I",)),
                                    (250.0, 7.3, ()), (100.0, 10, ()), (500.0, 10, ())]]
    bad = (np.full((12, 1000), np.nan), 100.0, STANDARD_LEADS, ())
    out = np.full((7, 12, spec.n_samples), 9.0, np.float32)  # dirty, like a reused shared-memory slot
    x, results = prepare_many([*recs[:3], bad, *recs[3:]], spec, out)
    assert x is out and isinstance(results[3], PreprocessError) and not x[3].any()
    for k, rec in zip([0, 1, 2, 4, 5, 6], recs, strict=True):
        alone, absent = prepare_record(*rec[:3], spec, rec[3])
        assert np.array_equal(x[k], alone) and results[k] == absent


@settings(max_examples=25, deadline=None, database=None)
@given(
    fs=st.sampled_from([50.0, 128.0, 250.0, 257.0, 360.0, 500.0, 1000.0]),
    seconds=st.floats(0.2, 15.0),
    n_leads=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_prepare_record_always_finite_and_shaped(fs: float, seconds: float, n_leads: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    leads = tuple(rng.permutation(STANDARD_LEADS)[:n_leads])
    sig = rng.normal(0, 1, (n_leads, max(1, int(fs * seconds))))
    x, absent = prepare_record(sig, fs, leads, SPEC_100)
    assert x.shape == (12, 1000) and np.isfinite(x).all()
    assert set(absent) <= set(STANDARD_LEADS) - set(leads)


# --- engine ------------------------------------------------------------------------------------


def test_engine_batch_zero_and_contract(tmp_path: Path) -> None:
    b = small_bundle(tmp_path / "b")
    engine = make_engine(b, "torch-cpu")
    n_tasks = len(b.task_ids)
    empty = engine.infer(np.zeros((0, 12, 1000), np.float32))
    assert empty.shape == (0, n_tasks) and empty.dtype == np.float32
    probs = engine.infer(np.random.default_rng(0).standard_normal((2, 12, 1000)))
    assert probs.shape == (2, n_tasks) and probs.dtype == np.float32
    assert ((probs > 0) & (probs < 1)).all()
    with pytest.raises(EngineError) as exc:
        engine.infer(np.zeros((1, 12, 500), np.float32))
    assert exc.value.reason == "invalid_input"
    with pytest.raises(EngineError) as exc:
        make_engine(b, "onnx")
    assert exc.value.reason == "unsupported_engine"


def test_250hz_8_lead_event_scored_by_500hz_12_lead_bundle(tmp_path: Path) -> None:
    """The issue's case: the bundle's input spec drives resampling, lead order and missing-lead flags."""
    from ops.feed import simulated_records
    from schemas.codec import decode_event
    from workers.pipeline import RawMessage, Screener

    b500 = small_bundle(tmp_path / "b", input_spec=SPEC_500)
    rec = next(simulated_records(1, fs=250.0, seed=3, bases=1))
    eight = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2")
    rec = dataclasses.replace(rec, leads=eight, signal_mv=rec.signal_mv[[STANDARD_LEADS.index(n) for n in eight]])
    event = decode_event(rec.encode())
    assert (event.sampling_rate_hz, event.signal_mv.shape) == (250.0, (8, 2500))
    x, absent = prepare_record(event.signal_mv, event.sampling_rate_hz, event.leads, b500.config.input)
    assert x.shape == (12, 5000) and absent == ("V3", "V4", "V5", "V6")
    assert not x[8:].any() and np.allclose(x[:8].std(axis=1), 1.0, atol=1e-3)
    assert make_engine(b500, "torch-cpu").infer(x[None]).shape == (1, len(b500.task_ids))
    (outcome,) = Screener(bundle=b500, engine=make_engine(b500, "torch-cpu")).screen(
        [RawMessage.of(rec.encode(), "ecg.events", 0, 0)])
    assert outcome.verdict is not None and set(outcome.verdict.scores) == set(b500.task_ids)
    assert {"V3", "V4", "V5", "V6"} <= set(outcome.verdict.masked_leads)
