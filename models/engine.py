"""Inference engines: model-ready (B, L, N) float32 -> (B, n_tasks) float32 calibrated probabilities.

The worker depends only on the ``Engine`` protocol. Every engine checks the input against the
bundle's InputSpec (the network accepts any length thanks to global pooling, but its scores
would be meaningless), computes head logits, and applies the bundle's per-task calibration.

| kind                | where | what                                                                  |
|---------------------|-------|-----------------------------------------------------------------------|
| ``torch-cpu``       | CPU   | eager float32, the reference every other engine is verified against   |
| ``torch-cpu-bf16``  | CPU   | eager under bf16 autocast (fast only on CPUs with native bf16: AMX)   |
| ``torch-cpu-compile`` | CPU | ``torch.compile`` (Inductor) of the BN-folded model, one graph per bucket |
| ``torch-cuda``      | GPU   | BN-folded model, fp16/bf16 autocast, a CUDA graph per batch bucket    |
| ``tensorrt``        | GPU   | Torch-TensorRT (``ir="dynamo"``), fp16, dynamic batch, cached on disk |

Compiled engines pad each batch up to a bucket size so a handful of compiled shapes (or
captured graphs) serve every batch; larger batches are split at the biggest bucket.
``auto`` tries TensorRT, then CUDA, then CPU eager, and logs what it chose and why.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.bundle import Bundle
from models.resnet import fold_batchnorm
from schemas.errors import ECGScreenError

log = logging.getLogger("ecgscreen.engine")

ENGINE_KINDS: tuple[str, ...] = ("auto", "torch-cpu", "torch-cpu-bf16", "torch-cpu-compile", "torch-cuda", "tensorrt")
DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
F32 = npt.NDArray[np.float32]


class EngineError(ECGScreenError):
    """``unsupported_engine`` (unknown kind), ``engine_unavailable`` (its hardware or library is
    absent here), ``engine_failed`` (compilation failed) or ``invalid_input`` (wrong array)."""


@dataclass(frozen=True)
class EngineOptions:
    """Knobs of the compiled engines; the defaults suit the worker's micro-batches (<= 32)."""

    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    precision: Literal["fp16", "bf16"] = "fp16"  # GPU engines
    cuda_graphs: bool = True
    device: str = "cuda"  # which GPU, for the GPU engines
    opt_batch: int = 32  # TensorRT optimises kernels for this batch
    cache_dir: Path | None = None  # TensorRT programs; None: ~/.cache/ecgscreen/tensorrt (ECGSCREEN_TRT_CACHE sets it)
    threads: int | None = None  # torch.set_num_threads (process-wide)

    def __post_init__(self) -> None:
        b = self.buckets
        ok = bool(b) and all(isinstance(v, int) and v >= 1 for v in b) and list(b) == sorted(set(b))
        if not ok:
            raise EngineError("invalid_engine_options", f"buckets must be ascending distinct ints >= 1, got {b}")
        if self.precision not in ("fp16", "bf16"):
            raise EngineError("invalid_engine_options", f"precision must be fp16 or bf16, got {self.precision!r}")


@runtime_checkable
class Engine(Protocol):
    name: str

    def infer(self, x: np.ndarray) -> F32: ...


# --- shared plumbing -----------------------------------------------------------------------------


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= n (n must not exceed the largest)."""
    return next(b for b in buckets if b >= n)


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class _EngineBase:
    """Input contract, empty batches and calibration; subclasses implement ``_logits``."""

    name: str

    def __init__(self, bundle: Bundle, options: EngineOptions | None = None) -> None:
        self.bundle = bundle
        self.options = options or EngineOptions()
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        spec = bundle.config.input
        self.input_shape = (len(spec.leads), spec.n_samples)
        self.n_tasks = len(bundle.config.tasks)

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 3 or tuple(x.shape[1:]) != self.input_shape:
            l_, n_ = self.input_shape
            raise EngineError("invalid_input", f"expected (B, {l_}, {n_}), got {x.shape}")
        return x

    def logits(self, x: np.ndarray) -> F32:
        """(B, T) raw head logits, before calibration."""
        x = self._check(x)
        if x.shape[0] == 0:
            return np.zeros((0, self.n_tasks), dtype=np.float32)
        return self._logits(x)

    def infer(self, x: np.ndarray) -> F32:
        return self.bundle.calibrate(self.logits(x))

    def _logits(self, x: np.ndarray) -> F32:
        raise NotImplementedError


class TorchEngine(_EngineBase):
    """Eager float32 PyTorch under ``inference_mode``: the reference engine.

    ``threads`` calls ``torch.set_num_threads``, which is process-wide: set it once per worker.
    The bundle's model is moved to ``device`` in place (bundles are not shared across devices).
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(bundle, EngineOptions(threads=threads))
        self.device = torch.device(device)
        self.name = f"torch-{self.device.type}"
        self.model = bundle.model.to(self.device).eval()
        self.eager_model: nn.Module = self.model  # what explanations differentiate

    def _logits(self, x: np.ndarray) -> F32:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


class TorchAutocastCPUEngine(TorchEngine):
    """Eager under CPU bf16 autocast: convs and matmuls in bf16, reductions in float32."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        super().__init__(bundle, "cpu", threads)
        self.name = "torch-cpu-bf16"

    def _logits(self, x: np.ndarray) -> F32:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(torch.from_numpy(x)).float().numpy()


class _BucketedEngine(_EngineBase):
    """Pads each chunk (<= the largest bucket) with zero records up to its bucket size."""

    buckets: tuple[int, ...]

    def _logits(self, x: np.ndarray) -> F32:
        out = []
        for sl in chunks(x.shape[0], self.buckets[-1]):
            part = x[sl]
            b = bucket_for(part.shape[0], self.buckets)
            if b > part.shape[0]:  # padding rows are independent of real ones (eval BN, no cross-batch ops)
                part = np.concatenate([part, np.zeros((b - part.shape[0], *part.shape[1:]), np.float32)])
            out.append(self._run_bucket(part)[: sl.stop - sl.start])
        return np.concatenate(out).astype(np.float32, copy=False)

    def _run_bucket(self, x: np.ndarray) -> F32:
        raise NotImplementedError

    def warmup(self) -> None:
        """Compile / capture every bucket now instead of on first use."""
        for b in self.buckets:
            self._run_bucket(np.zeros((b, *self.input_shape), np.float32))


class TorchCompileEngine(_BucketedEngine):
    """``torch.compile`` (Inductor, static shapes) of the BN-folded model on CPU.

    Measured here (2 cores): about 20 s to compile one R18 shape cold, 5-10 s from Inductor's
    on-disk cache; hence lazy per-bucket compilation and ``warmup`` for a worker's start-up.
    """

    def __init__(self, bundle: Bundle, options: EngineOptions | None = None) -> None:
        super().__init__(bundle, options)
        self.name = "torch-cpu-compile"
        self.buckets = self.options.buckets
        self.eager_model = fold_batchnorm(bundle.model).cpu().eval()
        self._compiled = torch.compile(self.eager_model, dynamic=False)

    def _run_bucket(self, x: np.ndarray) -> F32:
        with torch.inference_mode():
            return self._compiled(torch.from_numpy(x)).float().numpy()


# --- CUDA ----------------------------------------------------------------------------------------


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    x: torch.Tensor  # static input the graph reads
    y: torch.Tensor  # static output the graph writes
    staging: torch.Tensor  # pinned host buffer: an async, full-bandwidth host-to-device copy


def _need_cuda(device: str) -> torch.device:
    if not torch.cuda.is_available():
        raise EngineError("engine_unavailable", "CUDA is not available here (torch.cuda.is_available() is False)")
    return torch.device(device)


class TorchCudaEngine(_BucketedEngine):
    """BN-folded model on one GPU, fp16/bf16 autocast, one CUDA graph per batch bucket.

    Graphs are captured largest bucket first into one shared memory pool, so smaller graphs
    reuse the largest one's blocks. That sharing is safe because graphs are replayed one at a
    time and each output is copied to the host before the next replay.
    Autocast runs with ``cache_enabled=False``: its weight-cast cache must not outlive a capture.
    """

    def __init__(self, bundle: Bundle, options: EngineOptions | None = None) -> None:
        super().__init__(bundle, options)
        self.device = _need_cuda(self.options.device)
        self.dtype = torch.float16 if self.options.precision == "fp16" else torch.bfloat16
        self.buckets = self.options.buckets
        self.name = f"torch-cuda-{self.options.precision}" + ("-graphs" if self.options.cuda_graphs else "")
        torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: pick the fastest conv kernels once
        self.eager_model = fold_batchnorm(bundle.model).to(self.device).eval()
        self._graphs: dict[int, _Graph] = {}
        if self.options.cuda_graphs:
            self._pool = torch.cuda.graph_pool_handle()
            for b in sorted(self.buckets, reverse=True):
                self._graphs[b] = self._capture(b)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.dtype, cache_enabled=False):
            return self.eager_model(x).float()

    def _capture(self, b: int) -> _Graph:
        x = torch.zeros((b, *self.input_shape), device=self.device)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(side):  # warm-up off the capture stream, as the docs ask
            for _ in range(3):
                self._forward(x)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool):
            y = self._forward(x)
        staging = torch.empty((b, *self.input_shape), dtype=torch.float32, pin_memory=True)
        return _Graph(graph, x, y, staging)

    def _run_bucket(self, x: np.ndarray) -> F32:
        g = self._graphs.get(x.shape[0])
        if g is None:  # graphs off
            with torch.no_grad():
                return self._forward(torch.from_numpy(x).to(self.device)).cpu().numpy()
        g.staging.copy_(torch.from_numpy(x))
        g.x.copy_(g.staging, non_blocking=True)
        g.graph.replay()
        return g.y.cpu().numpy()  # .cpu() synchronises the stream


# --- TensorRT ------------------------------------------------------------------------------------


def _import_tensorrt() -> tuple[Any, Any]:
    """(torch_tensorrt, tensorrt) modules, or EngineError saying what is missing."""
    try:
        torch_tensorrt = importlib.import_module("torch_tensorrt")
        tensorrt = importlib.import_module("tensorrt")
    except ImportError as e:
        detail = (f"TensorRT is not installed here ({e.name} does not import); "
                  "install 'ecgscreen[tensorrt]' on a GPU host")
        raise EngineError("engine_unavailable", detail) from None
    return torch_tensorrt, tensorrt


def tensorrt_buckets(options: EngineOptions) -> tuple[int, ...]:
    """TensorRT's dynamic batch range starts at 2 (batch 1 is padded): 1 would make TRT treat the
    batch dimension as a broadcastable constant in some layers and refuse the profile."""
    return tuple(b for b in options.buckets if b >= 2) or (2,)


def trt_cache_dir(options: EngineOptions) -> Path:
    return options.cache_dir or Path.home() / ".cache" / "ecgscreen" / "tensorrt"


def trt_cache_key(bundle: Bundle, options: EngineOptions, gpu: str, versions: dict[str, str]) -> dict[str, Any]:
    """Everything a compiled program depends on: change any of it and the cache entry is another one."""
    buckets = tensorrt_buckets(options)
    opt = min(max(options.opt_batch, buckets[0]), buckets[-1])
    return {"bundle_sha256": bundle.sha256, "gpu": gpu, **versions, "precision": options.precision,
            "batch": [buckets[0], opt, buckets[-1]],
            "input_shape": [len(bundle.config.input.leads), bundle.config.input.n_samples]}


class TensorRTEngine(_BucketedEngine):
    """Torch-TensorRT program compiled once per (bundle, GPU, versions) and reloaded from the cache."""

    def __init__(self, bundle: Bundle, options: EngineOptions | None = None) -> None:
        super().__init__(bundle, options)
        from models.trt import load_or_compile

        _import_tensorrt()  # the more specific refusal first: without TensorRT, CUDA alone does not help
        self.device = _need_cuda(self.options.device)
        self.buckets = tensorrt_buckets(self.options)
        self.name = f"tensorrt-{self.options.precision}"
        self.program, self.cache_path = load_or_compile(bundle, self.options)
        self.eager_model = bundle.model  # explanations run eager float32, not through TensorRT

    def _run_bucket(self, x: np.ndarray) -> F32:
        with torch.no_grad():
            return self.program(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


# --- choosing ------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[[Bundle, EngineOptions], _EngineBase]] = {
    "torch-cpu": lambda b, o: TorchEngine(b, "cpu", o.threads),
    "torch-cpu-bf16": lambda b, o: TorchAutocastCPUEngine(b, o.threads),
    "torch-cpu-compile": TorchCompileEngine,
    "torch-cuda": TorchCudaEngine,
    "tensorrt": TensorRTEngine,
}
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "torch-cuda", "torch-cpu")


def make_engine(bundle: Bundle, kind: str = "auto", options: EngineOptions | None = None) -> Engine:
    """The engine ``kind`` (see ENGINE_KINDS); ``auto`` = the first of AUTO_ORDER that starts here."""
    options = options or EngineOptions()
    if kind == "auto":
        return _auto(bundle, options)
    factory = _FACTORIES.get(kind)
    if factory is None:
        raise EngineError("unsupported_engine", f"engine kind {kind!r} is unknown; choose one of {ENGINE_KINDS}")
    return factory(bundle, options)


def _auto(bundle: Bundle, options: EngineOptions) -> Engine:
    skipped: list[str] = []
    for kind in AUTO_ORDER:
        try:
            engine = _FACTORIES[kind](bundle, options)
        except EngineError as e:
            skipped.append(f"{kind}: {e.detail}")
            continue
        except Exception as e:  # a compiler crash must not stop the worker from starting on a slower engine
            skipped.append(f"{kind}: failed to start ({type(e).__name__})")
            continue
        why = "; ".join(skipped) if skipped else f"{kind} is the first choice and started"
        log.info("engine chosen", extra={"engine": engine.name, "reason": why})
        return engine
    raise EngineError("engine_unavailable", f"no engine could start: {skipped}")  # torch-cpu always starts


def available_engines() -> list[str]:
    """Engine kinds whose hardware and libraries are present (cheap checks, nothing is built)."""
    kinds = ["torch-cpu", "torch-cpu-bf16", "torch-cpu-compile"]
    if torch.cuda.is_available():
        kinds.append("torch-cuda")
        try:
            _import_tensorrt()
            kinds.append("tensorrt")
        except EngineError:
            pass
    return kinds
