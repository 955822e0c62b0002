"""Model bundles: a self-describing, hash-verified directory, loaded strictly and without pickle.

Layout::

    <bundle>/bundle.json          BundleConfig.to_dict() (sorted keys, 2-space indent)
    <bundle>/weights.safetensors  the state dict (safetensors: no code execution on load)
    <bundle>/SHA256SUMS           ``sha256sum`` lines for every other file in the directory

The bundle's identity is sha256(SHA256SUMS): it pins every byte of config and weights, and is
what verdicts and alerts cite (``Bundle.ref``). Loading hashes the very bytes it then parses,
so a file swapped between check and use cannot slip through.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import orjson
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.catalog import default_tasks
from models.config import (
    BUNDLE_SCHEMA_VERSION,
    Arch,
    BundleConfig,
    EncoderConfig,
    InputSpec,
    ModelConfigError,
    TaskSpec,
)
from models.ecgclip import ECGCLIPSignalModel
from schemas.errors import ECGScreenError
from schemas.messages import ModelRef

CONFIG_FILE = "bundle.json"
WEIGHTS_FILE = "weights.safetensors"
SUMS_FILE = "SHA256SUMS"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)

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
    ALREADY_EXISTS = "already_exists"


class BundleError(ECGScreenError):
    def __init__(self, reason: BundleReason, detail: str) -> None:
        super().__init__(reason, detail)


@dataclass(frozen=True, eq=False)  # eq=False: compare/hash by identity (holds an nn.Module)
class Bundle:
    path: Path
    config: BundleConfig
    model: ECGCLIPSignalModel
    sha256: str

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


def _state_bytes(config: BundleConfig, model: ECGCLIPSignalModel) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _check_state(config, state)  # never write a bundle that could not be loaded back
    return st_save(state, metadata={"format": "pt"})


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
    path: str | os.PathLike[str], config: BundleConfig, model: ECGCLIPSignalModel, *, overwrite: bool = False
) -> str:
    """Write ``model`` + ``config`` as a bundle directory at ``path``; return the bundle sha256.

    Files are written into a sibling temp directory and renamed into place, so a reader never
    sees a half-written bundle.
    """
    path = Path(path)
    files = {CONFIG_FILE: _config_bytes(config), WEIGHTS_FILE: _state_bytes(config, model)}
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
    if version != BUNDLE_SCHEMA_VERSION:
        raise BundleError(
            BundleReason.UNSUPPORTED_VERSION,
            f"schema_version {version!r}; this build reads only {BUNDLE_SCHEMA_VERSION}",
        )
    try:
        return BundleConfig.from_dict(raw)
    except ModelConfigError as e:
        raise BundleError(BundleReason.INVALID_CONFIG, e.detail) from e


def _check_state(config: BundleConfig, state: Mapping[str, torch.Tensor]) -> None:
    """Same keys and shapes as a freshly built model, else SHAPE_MISMATCH naming the first culprits."""
    expected = {k: tuple(v.shape) for k, v in ECGCLIPSignalModel.from_config(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in expected.keys() - got.keys()]
    problems += [f"unexpected {k}" for k in got.keys() - expected.keys()]
    problems += [f"{k}: {got[k]} != {s}" for k, s in expected.items() if k in got and got[k] != s]
    if problems:
        detail = f"weights do not fit the config: {sorted(problems)[:5]}"
        raise BundleError(BundleReason.SHAPE_MISMATCH, detail)


def _build_model(config: BundleConfig, weights: bytes, device: str | torch.device) -> ECGCLIPSignalModel:
    try:
        state = st_load(weights)
    except SafetensorError as e:
        raise BundleError(BundleReason.INVALID_WEIGHTS, f"{WEIGHTS_FILE}: {e}") from e
    _check_state(config, state)
    model = ECGCLIPSignalModel.from_config(config)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_bundle(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Bundle:
    """Verify every hash, parse the config strictly, build the model and load weights (strict)."""
    path = Path(path)
    files, sha = _read_verified(path)
    config = _parse_config(files[CONFIG_FILE])
    model = _build_model(config, files[WEIGHTS_FILE], device)
    return Bundle(path=path, config=config, model=model, sha256=sha)


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
