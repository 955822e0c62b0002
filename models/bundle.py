"""Model bundles: a self-describing, hash-verified directory, loaded strictly and without pickle.

Layout (schema version 2; version 1 is the same without a text tower)::

    <bundle>/bundle.json          BundleConfig.to_dict() (sorted keys, 2-space indent): schema
                                  version, encoder shape, input spec, tasks (head kind, prompts,
                                  threshold, calibration, target, validation metrics), provenance
    <bundle>/weights.safetensors  the scorer's state dict, plus ``text.*`` when the text tower
                                  travels (safetensors: no code execution on load)
    <bundle>/tokenizer.json       the text tower's BPE (only with a text tower)
    <bundle>/SHA256SUMS           ``sha256sum`` lines for every other file in the directory

The bundle's identity is sha256(SHA256SUMS): it pins every byte of config and weights, and is
what verdicts and alerts cite (``Bundle.ref``). Loading hashes the very bytes it then parses,
so a file swapped between check and use cannot slip through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.calibration import Calibrator
from models.catalog import default_tasks
from models.config import (
    BUNDLE_SCHEMA_VERSION,
    LABEL_SOURCE_SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    Arch,
    BundleConfig,
    EncoderConfig,
    InputSpec,
    ModelConfigError,
    TaskSpec,
)
from models.ecgclip import ECGCLIP, ECGCLIPSignalModel
from models.text import TextTower, TransformerTextEncoder
from models.tokenizer import BPETokenizer, TokenizerError
from schemas.errors import ECGScreenError
from schemas.messages import ModelRef

CONFIG_FILE = "bundle.json"
WEIGHTS_FILE = "weights.safetensors"
TOKENIZER_FILE = "tokenizer.json"
SUMS_FILE = "SHA256SUMS"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
TEXT_PREFIX = "text."

# sha256sum's text (two spaces) and binary (" *") forms; plain names only, no paths.
_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *]([A-Za-z0-9._-]+)$")


class BundleReason(StrEnum):
    """Why a bundle was refused. Stable: operators and tests switch on these."""

    MISSING_FILE = "missing_file"
    HASH_MISMATCH = "hash_mismatch"
    INVALID_MANIFEST = "invalid_manifest"
    UNSUPPORTED_VERSION = "unsupported_version"
    INVALID_CONFIG = "invalid_config"
    INVALID_WEIGHTS = "invalid_weights"
    SHAPE_MISMATCH = "shape_mismatch"
    MISSING_TASK = "missing_task"
    INVALID_TOKENIZER = "invalid_tokenizer"
    ALREADY_EXISTS = "already_exists"


class BundleError(ECGScreenError):
    def __init__(self, reason: BundleReason, detail: str) -> None:
        super().__init__(reason, detail)


@dataclass(frozen=True, eq=False)  # eq=False: compare/hash by identity (holds an nn.Module)
class Bundle:
    """A loaded, verified bundle. ``model`` returns logits; ``calibrate`` turns them into probabilities."""

    path: Path
    config: BundleConfig
    model: ECGCLIPSignalModel
    sha256: str
    text: TextTower | None = field(default=None)

    @cached_property
    def calibrator(self) -> Calibrator:
        return Calibrator(self.config.tasks)

    def calibrate(self, logits: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(B, T) head logits -> (B, T) calibrated probabilities, per the tasks' calibrations."""
        return self.calibrator(logits)

    @property
    def ref(self) -> ModelRef:
        c = self.config
        return ModelRef(name=c.name, version=c.version, sha256=self.sha256, trained=c.trained)

    @property
    def task_ids(self) -> tuple[str, ...]:
        return self.config.task_ids


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- saving ------------------------------------------------------------------------------------


def _full_state(model: ECGCLIPSignalModel, text: TextTower | None) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    if text is not None:
        state.update({TEXT_PREFIX + k: v for k, v in text.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _tokenizer_of(config: BundleConfig, text: TextTower | None) -> BPETokenizer | None:
    """The tokenizer to write, checking the text tower and ``config.text`` agree."""
    if (config.text is None) != (text is None):
        raise BundleError(BundleReason.INVALID_CONFIG, "config.text must be set exactly when a text tower is saved")
    if text is None:
        return None
    encoder = text.encoder
    if not isinstance(encoder, TransformerTextEncoder) or encoder.cfg != config.text:
        raise BundleError(BundleReason.INVALID_CONFIG,
                          "only the built-in TransformerTextEncoder with config.text travels in a bundle")
    return encoder.tokenizer


def _config_bytes(config: BundleConfig) -> bytes:
    # Sorted keys and fixed indent: the same config always hashes to the same sha256.
    return orjson.dumps(config.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _sums_bytes(files: Mapping[str, bytes]) -> bytes:
    return "".join(f"{_sha256(files[n])}  {n}\n" for n in sorted(files)).encode()


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise BundleError(BundleReason.ALREADY_EXISTS, f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise BundleError(BundleReason.ALREADY_EXISTS, f"{path} is not empty; pass overwrite=True")
        # Two renames keep the window without a bundle at ``path`` as short as the OS allows.
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        path.rename(old / "bundle")
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return
    tmp.replace(path)  # POSIX rename replaces an empty directory atomically


def save_bundle(
    path: str | os.PathLike[str], config: BundleConfig, model: ECGCLIPSignalModel, *,
    text: TextTower | None = None, overwrite: bool = False,
) -> str:
    """Write ``model`` (+ ``text`` tower) + ``config`` as a bundle directory at ``path``; return its sha256.

    Files are written into a sibling temp directory and renamed into place, so a reader never
    sees a half-written bundle. The state is checked against the config first: a bundle that
    could not be loaded back is never written.
    """
    path = Path(path)
    tokenizer = _tokenizer_of(config, text)
    state = _full_state(model, text)
    _check_state(config, state, tokenizer)
    files = {CONFIG_FILE: _config_bytes(config), WEIGHTS_FILE: st_save(state, metadata={"format": "pt"})}
    if tokenizer is not None:
        files[TOKENIZER_FILE] = tokenizer.to_json()
    sums = _sums_bytes(files)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the worker may run as another user
        for name, data in {**files, SUMS_FILE: sums}.items():
            (tmp / name).write_bytes(data)
        _move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _sha256(sums)


# --- loading -----------------------------------------------------------------------------------


def _parse_sums(text: bytes) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in text.decode("utf-8", errors="replace").splitlines():
        m = _SUMS_LINE.match(line)
        if m is None or m.group(2) in sums or m.group(2) == SUMS_FILE:
            raise BundleError(BundleReason.INVALID_MANIFEST, f"bad {SUMS_FILE} line: {line[:120]!r}")
        sums[m.group(2)] = m.group(1)
    return sums


def _read_verified(path: Path) -> tuple[dict[str, bytes], str]:
    """Read every file of the bundle, check each against SHA256SUMS; return contents and bundle sha."""
    if not path.is_dir():
        raise BundleError(BundleReason.MISSING_FILE, f"no bundle directory at {path}")
    for name in (SUMS_FILE, *REQUIRED_FILES):
        if not (path / name).is_file():
            raise BundleError(BundleReason.MISSING_FILE, f"{path / name} is missing")
    sums_bytes = (path / SUMS_FILE).read_bytes()
    sums = _parse_sums(sums_bytes)
    present = {p.name for p in path.iterdir()} - {SUMS_FILE}
    if unlisted := sorted(present - set(sums)):
        raise BundleError(BundleReason.HASH_MISMATCH, f"files not covered by {SUMS_FILE}: {unlisted}")
    if absent := sorted(set(sums) - present):
        raise BundleError(BundleReason.MISSING_FILE, f"listed in {SUMS_FILE} but missing: {absent}")
    files = {name: (path / name).read_bytes() for name in sums}
    for name, data in files.items():
        if _sha256(data) != sums[name]:
            raise BundleError(BundleReason.HASH_MISMATCH, f"{path / name} does not match {SUMS_FILE}")
    return files, _sha256(sums_bytes)


def _parse_config(data: bytes) -> BundleConfig:
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BundleError(BundleReason.INVALID_CONFIG, f"{CONFIG_FILE} is not JSON: {e}") from e
    if not isinstance(raw, dict):
        raise BundleError(BundleReason.INVALID_CONFIG, f"{CONFIG_FILE} must hold a JSON object")
    # Version first: a future schema may differ in any key, and deserves the clearer refusal.
    version = raw.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS or isinstance(version, bool):
        raise BundleError(
            BundleReason.UNSUPPORTED_VERSION,
            f"schema_version {version!r}; this build reads {list(SUPPORTED_SCHEMA_VERSIONS)}: "
            "upgrade ecgscreen to load this bundle, or re-export it",
        )
    if version == 1 and raw.get("text") is not None:
        raise BundleError(BundleReason.INVALID_CONFIG, "schema_version 1 bundles carry no text tower")
    legacy = version < LABEL_SOURCE_SCHEMA_VERSION
    if legacy and any(isinstance(t, dict) and "label_source" in t for t in raw.get("tasks") or ()):
        raise BundleError(BundleReason.INVALID_CONFIG, f"label_source needs schema_version {BUNDLE_SCHEMA_VERSION}")
    try:
        config = BundleConfig.from_dict(raw)
    except ModelConfigError as e:
        raise BundleError(BundleReason.INVALID_CONFIG, e.detail) from e
    return _legacy_label_sources(config) if legacy else config


def _legacy_label_sources(config: BundleConfig) -> BundleConfig:
    """v1/v2 heads predate ``label_source``: every trained one came from PTB-XL's ECG statements."""
    if not config.trained:
        return config
    tasks = tuple(dataclasses.replace(t, label_source="ecg_statement") for t in config.tasks)
    return dataclasses.replace(config, tasks=tasks)


def _parse_tokenizer(config: BundleConfig, files: Mapping[str, bytes]) -> BPETokenizer | None:
    if config.text is None:
        if TOKENIZER_FILE in files:
            raise BundleError(BundleReason.INVALID_CONFIG, f"{TOKENIZER_FILE} present but config.text is null")
        return None
    if TOKENIZER_FILE not in files:
        raise BundleError(BundleReason.MISSING_FILE, f"config.text is set but {TOKENIZER_FILE} is missing")
    try:
        return BPETokenizer.from_json(files[TOKENIZER_FILE])
    except TokenizerError as e:
        raise BundleError(BundleReason.INVALID_TOKENIZER, e.detail) from e


def _text_tower(config: BundleConfig, tokenizer: BPETokenizer | None) -> TextTower | None:
    if config.text is None or tokenizer is None:
        return None
    try:
        return TextTower(TransformerTextEncoder(config.text, tokenizer), config.encoder.embed_dim)
    except TokenizerError as e:
        raise BundleError(BundleReason.SHAPE_MISMATCH, e.detail) from e


def _check_state(config: BundleConfig, state: Mapping[str, torch.Tensor], tokenizer: BPETokenizer | None) -> None:
    """Same keys and shapes as freshly built modules, else SHAPE_MISMATCH naming the first culprits."""
    fresh = _full_state(ECGCLIPSignalModel.from_config(config), _text_tower(config, tokenizer))
    expected = {k: tuple(v.shape) for k, v in fresh.items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in expected.keys() - got.keys()]
    problems += [f"unexpected {k}" for k in got.keys() - expected.keys()]
    problems += [f"{k}: {got[k]} != {s}" for k, s in expected.items() if k in got and got[k] != s]
    if problems:
        detail = f"weights do not fit the config: {sorted(problems)[:5]}"
        raise BundleError(BundleReason.SHAPE_MISMATCH, detail)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BundleError(BundleReason.INVALID_WEIGHTS, f"non-finite values in {sorted(bad)[:5]}")


def _build(config: BundleConfig, weights: bytes, tokenizer: BPETokenizer | None,
           device: str | torch.device) -> tuple[ECGCLIPSignalModel, TextTower | None]:
    try:
        state = st_load(weights)
    except SafetensorError as e:
        raise BundleError(BundleReason.INVALID_WEIGHTS, f"{WEIGHTS_FILE}: {e}") from e
    _check_state(config, state, tokenizer)
    model = ECGCLIPSignalModel.from_config(config)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)}, strict=True)
    text = _text_tower(config, tokenizer)
    if text is not None:
        n = len(TEXT_PREFIX)
        text.load_state_dict({k[n:]: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}, strict=True)
        text.eval()  # stays on CPU: only offline commands run it
    return model.to(device).eval(), text


def _check_required(config: BundleConfig, required: Collection[str]) -> None:
    if missing := sorted(set(required) - set(config.task_ids)):
        raise BundleError(BundleReason.MISSING_TASK,
                          f"bundle lacks required task(s) {missing}; it carries {list(config.task_ids)}")


def load_bundle(path: str | os.PathLike[str], device: str | torch.device = "cpu", *,
                required_tasks: Collection[str] = ()) -> Bundle:
    """Verify every hash, parse the config strictly, build the model and load weights (strict).

    ``required_tasks``: ids the caller cannot do without; a bundle lacking any is refused
    (``missing_task``) rather than silently scoring fewer tasks.
    """
    path = Path(path)
    files, sha = _read_verified(path)
    config = _parse_config(files[CONFIG_FILE])
    _check_required(config, required_tasks)
    tokenizer = _parse_tokenizer(config, files)
    model, text = _build(config, files[WEIGHTS_FILE], tokenizer, device)
    return Bundle(path=path, config=config, model=model, sha256=sha, text=text)


def make_provenance(data: str, **extra: str) -> dict[str, str]:
    """Provenance for a trained bundle: data description, code version, torch, and the UTC date."""
    from datetime import UTC, datetime
    from importlib.metadata import PackageNotFoundError, version

    try:
        code = version("ecgscreen")
    except PackageNotFoundError:
        code = "unknown"
    return {"data": data, "code_version": code, "torch": torch.__version__.split("+")[0],
            "created": datetime.now(UTC).isoformat(timespec="seconds"), **extra}


def export_bundle(
    path: str | os.PathLike[str], clip: ECGCLIP, tasks: Sequence[TaskSpec], input_spec: InputSpec, *,
    name: str, version: str, trained: bool, provenance: Mapping[str, str],
    linear_heads: torch.nn.Linear | None = None, overwrite: bool = False,
) -> Bundle:
    """Write a CLIP model as a bundle: scorer (signal tower + heads + embedded prompts) and,
    when the text encoder is the built-in one, the text tower and its tokenizer."""
    encoder = clip.text.encoder
    text_cfg = encoder.cfg if isinstance(encoder, TransformerTextEncoder) else None
    config = BundleConfig(
        schema_version=BUNDLE_SCHEMA_VERSION, name=name, version=version, trained=trained,
        encoder=clip.signal.cfg, input=input_spec, tasks=tuple(tasks), provenance=dict(provenance), text=text_cfg,
    )
    scorer = clip.scorer(tasks, linear_heads)
    save_bundle(path, config, scorer, text=clip.text if text_cfg is not None else None, overwrite=overwrite)
    return load_bundle(path)


# --- untrained bundles -------------------------------------------------------------------------


def untrained_config(
    arch: Arch = "r18",
    input_spec: InputSpec | None = None,
    tasks: Sequence[TaskSpec] | None = None,
    base_width: int = 64,
    seed: int = 0,
) -> BundleConfig:
    """The BundleConfig ``init_untrained_bundle`` writes; no timestamps, so it is reproducible."""
    return BundleConfig(
        schema_version=BUNDLE_SCHEMA_VERSION,
        name=f"ecgclip-{arch}",
        version="0.0.0-untrained",
        trained=False,
        encoder=EncoderConfig(arch=arch, base_width=base_width),
        input=input_spec or InputSpec(sampling_rate_hz=100.0, n_samples=1000),
        tasks=tuple(tasks) if tasks is not None else default_tasks(),
        provenance={
            "kind": "untrained",
            "init": f"random (He init, zero-init residual), torch.manual_seed({seed})",
            "warning": "random weights: scores carry no clinical meaning",
            "torch": torch.__version__.split("+")[0],
        },
    )


def init_untrained_bundle(
    path: str | os.PathLike[str],
    arch: Arch = "r18",
    seed: int = 0,
    input_spec: InputSpec | None = None,
    tasks: Sequence[TaskSpec] | None = None,
    *,
    base_width: int = 64,
    overwrite: bool = False,
) -> Bundle:
    """Write a deterministic randomly initialised bundle (same seed -> same sha256) and load it back."""
    config = untrained_config(arch, input_spec, tasks, base_width, seed)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG stream untouched
        torch.manual_seed(seed)
        model = ECGCLIPSignalModel.from_config(config)
    save_bundle(path, config, model, overwrite=overwrite)
    return load_bundle(path)
