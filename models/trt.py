"""Torch-TensorRT compilation and its on-disk cache (imported only by the TensorRT engine and commands).

Written against Torch-TensorRT's documented dynamo API:

* ``torch_tensorrt.compile(module, ir="dynamo", arg_inputs=[torch_tensorrt.Input(min_shape=...,
  opt_shape=..., max_shape=..., dtype=torch.float32)], enabled_precisions={torch.float16})``
* ``torch_tensorrt.save(trt_gm, path, output_format="exported_program", arg_inputs=[example],
  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=lo, max=hi)}})`` (explicit dynamic
  shapes, so the saved program keeps the dynamic batch), and ``torch_tensorrt.load(path).module()``.

NOT RUN on the development machine (no GPU, no TensorRT): the code path is exercised only
where ``tensorrt`` imports and CUDA is present.

The cache is a local, derived artifact, not a bundle: it is keyed by everything the compiled
program depends on (bundle sha256, GPU model and compute capability, TensorRT /
Torch-TensorRT / torch versions, precision, batch range, input shape) and a JSON manifest
beside each program records that key and the program's sha256, checked before every load so
a truncated or swapped file is recompiled rather than run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
import torch

from models.bundle import Bundle
from models.engine import EngineError, EngineOptions, _import_tensorrt, trt_cache_dir, trt_cache_key
from models.resnet import fold_batchnorm

log = logging.getLogger("ecgscreen.engine")


def _versions(torch_tensorrt: Any, tensorrt: Any) -> dict[str, str]:
    return {"tensorrt": str(tensorrt.__version__), "torch_tensorrt": str(torch_tensorrt.__version__),
            "torch": torch.__version__}


def _gpu(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"


def cache_entry(bundle: Bundle, options: EngineOptions) -> tuple[Path, dict[str, Any]]:
    """Where this bundle's program lives for this GPU and these versions, and its key."""
    torch_tensorrt, tensorrt = _import_tensorrt()
    key = trt_cache_key(bundle, options, _gpu(torch.device(options.device)), _versions(torch_tensorrt, tensorrt))
    digest = hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return trt_cache_dir(options) / f"{digest}.ep", key


def _manifest_ok(program: Path, key: dict[str, Any]) -> bool:
    manifest = program.with_suffix(".json")
    if not (program.is_file() and manifest.is_file()):
        return False
    try:
        doc = orjson.loads(manifest.read_bytes())
    except orjson.JSONDecodeError:
        return False
    digest = hashlib.sha256(program.read_bytes()).hexdigest()
    return isinstance(doc, dict) and doc.get("key") == key and doc.get("sha256") == digest


def compile_program(bundle: Bundle, options: EngineOptions, path: Path, key: dict[str, Any]) -> None:
    """Compile the BN-folded model with a dynamic batch and save it (program, then manifest)."""
    torch_tensorrt, _ = _import_tensorrt()
    device = torch.device(options.device)
    model = fold_batchnorm(bundle.model).to(device).eval()
    lo, opt, hi = key["batch"]
    leads, n = key["input_shape"]
    spec = torch_tensorrt.Input(min_shape=(lo, leads, n), opt_shape=(opt, leads, n), max_shape=(hi, leads, n),
                                dtype=torch.float32)
    precision = torch.float16 if options.precision == "fp16" else torch.bfloat16
    try:
        trt_gm = torch_tensorrt.compile(model, ir="dynamo", arg_inputs=[spec], enabled_precisions={precision})
    except Exception as e:  # the compiler's own errors are many and undocumented; name the step that failed
        raise EngineError("engine_failed", f"Torch-TensorRT compilation failed: {type(e).__name__}: {e}") from e
    example = torch.zeros((opt, leads, n), device=device)
    dynamic = {"x": {0: torch.export.Dim("batch", min=lo, max=hi)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".ep", dir=path.parent)
    os.close(fd)
    try:
        torch_tensorrt.save(trt_gm, tmp, output_format="exported_program", arg_inputs=[example],
                            dynamic_shapes=dynamic)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        os.replace(tmp, path)  # program first, manifest last: a manifest always names a complete program
    finally:
        Path(tmp).unlink(missing_ok=True)
    manifest = orjson.dumps({"key": key, "sha256": digest}, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    path.with_suffix(".json").write_bytes(manifest)


def load_or_compile(bundle: Bundle, options: EngineOptions) -> tuple[Any, Path]:
    """(callable program on the GPU, its cache path), compiling on a cache miss."""
    torch_tensorrt, _ = _import_tensorrt()
    path, key = cache_entry(bundle, options)
    if not _manifest_ok(path, key):
        log.info("compiling TensorRT program", extra={"bundle": str(bundle.path), "what": str(path)})
        compile_program(bundle, options, path, key)
    program = torch_tensorrt.load(str(path)).module()
    return program, path
