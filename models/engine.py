"""Inference engines: model-ready (B, L, N) float32 -> (B, n_tasks) float32 probabilities.

The worker depends only on the ``Engine`` protocol, so a CUDA or TensorRT engine can be
dropped in later without touching it. Engines check the input against the bundle's InputSpec:
the network itself would accept any length (global pooling), but its scores would be meaningless.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch

from models.bundle import Bundle
from schemas.errors import ECGScreenError

ENGINE_KINDS: tuple[str, ...] = ("auto", "torch-cpu")


class EngineError(ECGScreenError):
    """``unsupported_engine`` (unknown or not-yet-built kind) or ``invalid_input`` (wrong array)."""


@runtime_checkable
class Engine(Protocol):
    name: str

    def infer(self, x: np.ndarray) -> npt.NDArray[np.float32]: ...


class TorchEngine:
    """Eager PyTorch under ``inference_mode``.

    ``threads`` calls ``torch.set_num_threads``, which is process-wide: set it once per worker.
    The bundle's model is moved to ``device`` in place (bundles are not shared across devices).
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.name = f"torch-{self.device.type}"
        self.bundle = bundle
        self.model = bundle.model.to(self.device).eval()
        spec = bundle.config.input
        self.input_shape = (len(spec.leads), spec.n_samples)
        self.n_tasks = len(bundle.config.tasks)

    def _check(self, x: np.ndarray) -> None:
        if x.ndim != 3 or tuple(x.shape[1:]) != self.input_shape:
            raise EngineError(
                "invalid_input", f"expected (B, {self.input_shape[0]}, {self.input_shape[1]}), got {x.shape}"
            )

    def infer(self, x: np.ndarray) -> npt.NDArray[np.float32]:
        x = np.asarray(x, dtype=np.float32)
        self._check(x)
        if x.shape[0] == 0:  # BatchNorm in eval is fine with B=0, but skip the dispatch entirely
            return np.zeros((0, self.n_tasks), dtype=np.float32)
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
            return torch.sigmoid(logits).float().cpu().numpy()


def make_engine(bundle: Bundle, kind: str = "auto") -> Engine:
    """``auto`` and ``torch-cpu`` exist today; ``torch-cuda`` and ``tensorrt`` are planned."""
    if kind in ("auto", "torch-cpu"):
        return TorchEngine(bundle, device="cpu")
    detail = f"engine kind {kind!r} is not available; choose one of {ENGINE_KINDS}"
    raise EngineError("unsupported_engine", detail)
