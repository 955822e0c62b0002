"""Explanations: attribution summarised as leads and windows, and carried by the worker's alerts."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import workers.pipeline as pipeline
from models.bundle import Bundle, init_untrained_bundle
from models.config import STANDARD_LEADS
from models.engine import make_engine
from models.explain import ExplainConfig, attribution, attribution_many, explain, explain_many, summarise
from ops.feed import simulated_records
from schemas.codec import decode_alert, encode_alert
from workers.pipeline import RawMessage, Screener

FS, N = 100.0, 1000


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    b = init_untrained_bundle(tmp_path_factory.mktemp("x") / "b", base_width=8, seed=5)
    with torch.no_grad():
        for m in b.model.modules():  # no dead residual branches: every lead reaches every head
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.fill_(1.0)
        b.model.heads.weight.normal_(0, 0.05)
    return b


def burst(lead: str, start_s: float, end_s: float, seed: int = 0) -> np.ndarray:
    """Near-silent record with one strong oscillation on one lead."""
    rng = np.random.default_rng(seed)
    x = 0.01 * rng.standard_normal((12, N))
    t = np.arange(N) / FS
    on = (t >= start_s) & (t < end_s)
    x[STANDARD_LEADS.index(lead), on] += 5 * np.sin(2 * np.pi * 8 * t[on])
    return x.astype(np.float32)


def test_explanation_points_at_the_driving_lead_and_window(bundle: Bundle) -> None:
    e = explain(bundle, burst("V2", 3.1, 3.9), task_index=5)
    assert e.method == "gradient_x_input" and e.top_leads[0] == "V2" and len(e.top_leads) == 3
    top = e.windows[0]
    assert (top.lead, top.start_s, top.end_s) == ("V2", 3.0, 4.0) and top.weight > 0.5
    assert len(e.windows) == 3 and sum(w.weight for w in e.windows) <= 1.0 + 1e-6
    assert all(0 <= w.start_s < w.end_s <= N / FS and 0 <= w.weight <= 1 for w in e.windows)


def test_absent_leads_never_explain(bundle: Bundle) -> None:
    x = burst("V2", 3.1, 3.9)
    x[[STANDARD_LEADS.index("V2"), STANDARD_LEADS.index("I")]] = 0.0  # zero-filled, as preprocessing does
    e = explain(bundle, x, task_index=0, config=ExplainConfig(top_leads=12, top_windows=50))
    assert "V2" not in e.top_leads and "I" not in e.top_leads
    assert {w.lead for w in e.windows}.isdisjoint({"V2", "I"})
    assert explain(bundle, np.zeros((12, N), np.float32), 0).top_leads == ()  # nothing to attribute


def test_integrated_gradients_completeness(bundle: Bundle) -> None:
    """IG attributions sum to logit(x) - logit(0) (up to the Riemann error of a few steps)."""
    x = burst("II", 1.0, 6.0, seed=2) + 0.3 * np.random.default_rng(3).standard_normal((12, N)).astype(np.float32)
    attr = attribution(bundle.model, x, 2, ExplainConfig(method="integrated_gradients", steps=32))
    with torch.no_grad():
        out = bundle.model(torch.from_numpy(np.stack([x, np.zeros_like(x)])))[:, 2]
    assert attr.sum() == pytest.approx(float(out[0] - out[1]), rel=0.05, abs=1e-3)
    e = explain(bundle, x, 2, ExplainConfig(method="integrated_gradients", steps=4))
    assert e.method == "integrated_gradients" and e.top_leads


def test_summary_windows_and_engine_source(bundle: Bundle) -> None:
    attr = np.zeros((12, N))
    attr[4, 250:260] = 3.0  # aVL, 2.5-2.6 s
    attr[7, 990:] = -1.0  # V2, the last, partial window; sign does not matter
    e = summarise(attr, STANDARD_LEADS, FS, ExplainConfig(window_s=0.5))
    assert e.top_leads == ("aVL", "V2")
    assert [(w.lead, w.start_s, w.end_s, w.weight) for w in e.windows] == [("aVL", 2.5, 3.0, 0.75),
                                                                            ("V2", 9.5, 10.0, 0.25)]
    # An engine is explained through its own eager model, not its bundle's: with a copy whose
    # head is zeroed there is nothing to attribute. (Comparing torch-cpu with its own bundle
    # would compare a model with itself.)
    zeroed = copy.deepcopy(bundle.model)
    with torch.no_grad():
        zeroed.heads.weight.zero_()
    assert explain(bundle, burst("V5", 5, 6), 1).top_leads
    assert explain(SimpleNamespace(bundle=bundle, eager_model=zeroed), burst("V5", 5, 6), 1).top_leads == ()
    assert explain(make_engine(bundle, "torch-cpu"), burst("V5", 5, 6), 1).method == e.method
    with pytest.raises(ValueError):
        explain(bundle, np.zeros((12, 500), np.float32), 0)
    with pytest.raises(IndexError):
        explain(bundle, np.zeros((12, N), np.float32), 99)


# --- carried in the worker's alerts ------------------------------------------------------------


def screener_with_bias(tmp_path: Path, bias: float) -> Screener:
    b = init_untrained_bundle(tmp_path / f"b{bias}", base_width=8, seed=1)
    with torch.no_grad():
        b.model.heads.bias.fill_(bias)  # every task far above (or below) its threshold
    return Screener(bundle=b, engine=make_engine(b, "torch-cpu"))


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return [r.encode() for r in simulated_records(2, fs=500.0, seed=4, bases=1)]


def test_one_backward_pass_explains_each_pair_as_alone(bundle: Bundle) -> None:
    """Batched attribution (eval BatchNorm: records do not interact) equals one pass per pair."""
    x = np.stack([burst("V2", 2.0, 3.0, 1), burst("II", 5.0, 6.0, 2), burst("V2", 2.0, 3.0, 1)])
    tasks = [0, 3, 5]
    for cfg in (ExplainConfig(), ExplainConfig(method="integrated_gradients", steps=4)):
        alone = np.stack([attribution(bundle.model, x[k], tasks[k], cfg) for k in range(3)])
        together = attribution_many(bundle.model, x, tasks, cfg)
        np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-6 * float(np.abs(alone).max()))
    assert explain_many(bundle, x, tasks) == [explain(bundle, x[k], tasks[k]) for k in range(3)]
    assert explain_many(bundle, x[:0], []) == []


def test_alerts_carry_explanations(tmp_path: Path, payloads: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[int]] = []
    real = pipeline.explain_many

    def counting(source: Any, x: np.ndarray, task_indices: list[int]) -> Any:
        calls.append(list(task_indices))
        return real(source, x, task_indices)

    monkeypatch.setattr(pipeline, "explain_many", counting)
    s = screener_with_bias(tmp_path, 8.0)
    outcomes = s.screen([RawMessage.of(p, "ecg.events", 0, i) for i, p in enumerate(payloads)])
    alerts = [a for o in outcomes for a in o.alerts]
    assert alerts, "a +8 bias must make the alerting tasks fire"
    # One batched call for the whole batch, one pair per (record, task), alerting records only.
    assert len(calls) == 1 and len(calls[0]) == len(alerts)
    for a in alerts:
        assert a.explanation is not None and a.explanation.method == "gradient_x_input"
        assert set(a.explanation.top_leads) <= set(STANDARD_LEADS) and a.explanation.windows
        assert decode_alert(encode_alert(a)).explanation == a.explanation  # survives the wire format
    calls.clear()
    quiet = screener_with_bias(tmp_path, -8.0).screen([RawMessage.of(payloads[0], "ecg.events", 0, 0)])
    assert quiet[0].alerts == () and calls == []  # no alert, no attribution cost


def test_explanation_failure_never_sinks_the_verdict(tmp_path: Path, payloads: list[bytes],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("backward failed")

    monkeypatch.setattr(pipeline, "explain_many", broken)
    (o,) = screener_with_bias(tmp_path, 8.0).screen([RawMessage.of(payloads[0], "ecg.events", 0, 0)])
    assert o.verdict is not None and o.alerts and all(a.explanation is None for a in o.alerts)
    assert set(o.verdict.alert_ids) == {a.alert_id for a in o.alerts}
