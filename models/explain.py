"""Why an alert fired: a cheap attribution over the model input, summarised as leads and time windows.

Computed only for records that raise an alert, always with the eager float32 model on the
engine's device (a CUDA engine's eager twin sits beside its graphs or TensorRT program, which
have no backward pass; half precision gradients are noisy). ``explain_many`` takes every
(record, task) pair of a batch in ONE forward and backward pass: with BatchNorm in eval mode
records do not interact, so each input's gradient is exactly its own pair's, and the cost is
one batched pass instead of one pass per alert (integrated gradients: ``steps`` copies of the
batch in that one pass).

Summary: attribution magnitude |a(l, t)| (direction is not shown to the reader: a clinician
looks at where, not at the sign), as shares of its total. ``top_leads`` are the leads with
the largest share; ``windows`` are the (lead, fixed-length window) cells with the largest
share, times in seconds from the start of the MODEL INPUT (after resampling and cropping).
Leads that were missing or masked are zero in the input, so gradient x input gives them
exactly zero: an explanation never points at a lead the model did not see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.bundle import Bundle
from models.config import ModelConfigError
from schemas.messages import Explanation, Window

Method = Literal["gradient_x_input", "integrated_gradients"]
METHODS: tuple[str, ...] = ("gradient_x_input", "integrated_gradients")


@dataclass(frozen=True)
class ExplainConfig:
    method: Method = "gradient_x_input"
    steps: int = 8  # integrated gradients: midpoint rule; 8 keeps the cost at one batch of 8
    window_s: float = 1.0  # about one beat: fine enough to point at a complex, coarse enough to read
    top_leads: int = 3
    top_windows: int = 3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ModelConfigError(f"explanation method must be one of {METHODS}, got {self.method!r}")
        if self.steps < 1 or self.top_leads < 1 or self.top_windows < 1 or not self.window_s > 0:
            raise ModelConfigError("steps, top_leads, top_windows and window_s must be positive")


def _eager_model(source: object) -> nn.Module:
    """The float32 eager module of a Bundle or of an engine (engines expose ``eager_model``)."""
    model = getattr(source, "eager_model", None)
    if model is None and isinstance(source, Bundle):
        model = source.model
    if not isinstance(model, nn.Module):
        raise TypeError(f"cannot explain with {type(source).__name__}: no eager model")
    return model


def _bundle(source: object) -> Bundle:
    bundle = source if isinstance(source, Bundle) else getattr(source, "bundle", None)
    if not isinstance(bundle, Bundle):
        raise TypeError(f"{type(source).__name__} carries no bundle")
    return bundle


def attribution(model: nn.Module, x: npt.ArrayLike, task_index: int, config: ExplainConfig = ExplainConfig(),
                ) -> npt.NDArray[np.float32]:
    """(L, N) attribution of task ``task_index``'s logit to each input sample (zero baseline)."""
    param = next(model.parameters())
    x0 = torch.as_tensor(np.asarray(x, dtype=np.float32), device=param.device)
    if config.method == "gradient_x_input":
        alphas = torch.ones(1, device=param.device)
    else:  # integrated gradients, midpoint Riemann sum along the straight path from zero
        alphas = (torch.arange(config.steps, device=param.device) + 0.5) / config.steps
    with torch.inference_mode(False), torch.enable_grad():
        path = (alphas[:, None, None] * x0[None]).requires_grad_(True)
        logit = model(path)[:, task_index].sum()
        (grad,) = torch.autograd.grad(logit, path)
    return (grad.mean(0) * x0).detach().float().cpu().numpy()


def attribution_many(model: nn.Module, x: npt.ArrayLike, task_indices: Sequence[int],
                     config: ExplainConfig = ExplainConfig()) -> npt.NDArray[np.float32]:
    """(K, L, N) attributions of pair k = (record x[k], task task_indices[k]) in one backward pass."""
    param = next(model.parameters())
    x0 = torch.as_tensor(np.asarray(x, dtype=np.float32), device=param.device)
    k = x0.shape[0]
    tasks = torch.as_tensor(list(task_indices), dtype=torch.long, device=param.device)
    if config.method == "gradient_x_input":
        alphas = torch.ones(1, device=param.device)
    else:  # integrated gradients, midpoint Riemann sum along the straight path from zero
        alphas = (torch.arange(config.steps, device=param.device) + 0.5) / config.steps
    s = alphas.shape[0]
    with torch.inference_mode(False), torch.enable_grad():
        path = (alphas[:, None, None, None] * x0[None]).reshape(s * k, *x0.shape[1:]).requires_grad_(True)
        logits = model(path).reshape(s, k, -1)
        picked = logits.gather(2, tasks[None, :, None].expand(s, k, 1)).sum()
        (grad,) = torch.autograd.grad(picked, path)
    return (grad.reshape(s, k, *x0.shape[1:]).mean(0) * x0).detach().float().cpu().numpy()


def summarise(attr: npt.ArrayLike, leads: tuple[str, ...], fs: float, config: ExplainConfig = ExplainConfig(),
              ) -> Explanation:
    """Top leads and top (lead, window) cells by share of the total |attribution|."""
    a = np.abs(np.asarray(attr, dtype=np.float64))
    total = a.sum()
    if not np.isfinite(total) or total <= 0:
        return Explanation(method=config.method, top_leads=(), windows=())
    per_lead = a.sum(axis=1) / total
    top = [i for i in np.argsort(-per_lead, kind="stable")[: config.top_leads] if per_lead[i] > 0]
    w = max(1, round(config.window_s * fs))
    n_win = math.ceil(a.shape[1] / w)
    padded = np.pad(a, ((0, 0), (0, n_win * w - a.shape[1])))
    cells = padded.reshape(a.shape[0], n_win, w).sum(axis=2) / total
    windows = []
    for flat in np.argsort(-cells, axis=None, kind="stable")[: config.top_windows]:
        lead, k = divmod(int(flat), n_win)
        if cells[lead, k] <= 0:
            break
        end = min((k + 1) * w, a.shape[1])
        windows.append(Window(lead=leads[lead], start_s=round(k * w / fs, 3), end_s=round(end / fs, 3),
                              weight=round(float(cells[lead, k]), 4)))
    return Explanation(method=config.method, top_leads=tuple(leads[i] for i in top), windows=tuple(windows))


def explain(source: Bundle | object, x_record: npt.ArrayLike, task_index: int,
            config: ExplainConfig = ExplainConfig()) -> Explanation:
    """Explanation of one model-ready record (L, N) for one task, from a Bundle or an engine."""
    bundle = _bundle(source)
    spec = bundle.config.input
    x = np.asarray(x_record, dtype=np.float32)
    if x.shape != (len(spec.leads), spec.n_samples):
        raise ValueError(f"expected one model-ready record {(len(spec.leads), spec.n_samples)}, got {x.shape}")
    if not 0 <= task_index < len(bundle.config.tasks):
        raise IndexError(f"task index {task_index} outside the bundle's {len(bundle.config.tasks)} tasks")
    attr = attribution(_eager_model(source), x, task_index, config)
    return summarise(attr, spec.leads, spec.sampling_rate_hz, config)


def explain_many(source: Bundle | object, x_records: npt.ArrayLike, task_indices: Sequence[int],
                 config: ExplainConfig = ExplainConfig()) -> list[Explanation]:
    """One explanation per (record x_records[k], task task_indices[k]) pair, all in one backward pass."""
    bundle = _bundle(source)
    spec = bundle.config.input
    x = np.asarray(x_records, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (len(spec.leads), spec.n_samples) or len(x) != len(task_indices):
        raise ValueError(f"expected (K, {len(spec.leads)}, {spec.n_samples}) records, one per task index, "
                         f"got {x.shape} for {len(task_indices)} tasks")
    if any(not 0 <= t < len(bundle.config.tasks) for t in task_indices):
        raise IndexError(f"task index outside the bundle's {len(bundle.config.tasks)} tasks")
    if len(x) == 0:
        return []
    attr = attribution_many(_eager_model(source), x, task_indices, config)
    return [summarise(a, spec.leads, spec.sampling_rate_hz, config) for a in attr]
