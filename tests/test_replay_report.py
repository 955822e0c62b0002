"""The replay's comparison and diff report as pure functions on hand-made rows."""

from __future__ import annotations

from pathlib import Path

import orjson

from ops.replay.compare import SCORE_TOL, Pairs, Row, differences
from ops.replay.report import summarise, write


def _row(event_id: str, score: float, alerts: frozenset[str] = frozenset(), status: str = "pass",
         model: str = "m@1#a") -> Row:
    return Row(event_id, model, status, (), (), (), {"ecg.mi": score, "ecg.norm": 1 - score}, alerts)


def test_rows_agree_within_float_rounding_and_differ_in_any_decision() -> None:
    a = _row("e1", 0.5)
    assert differences(a, _row("e1", 0.5 + SCORE_TOL / 2)) == []
    assert differences(a, _row("e1", 0.5 + 10 * SCORE_TOL)) == ["scores"]
    assert differences(a, _row("e1", 0.5, frozenset({"ecg.mi"}))) == ["alerts"]
    assert differences(a, _row("e1", 0.5, status="degraded")) == ["quality"]
    assert differences(a, _row("e1", 0.5, model="m@2#b")) == ["model"]
    assert differences(a, _row("e1", 0.5, model="m@2#b"), same_model=False) == []


def test_summary_counts_flips_gate_changes_and_labelled_metrics(tmp_path: Path) -> None:
    pairs = Pairs("A", "B")
    scores_a = [0.9, 0.8, 0.2, 0.1, 0.7, 0.3]
    scores_b = [0.95, 0.3, 0.6, 0.05, 0.75, 0.2]
    for k, (sa, sb) in enumerate(zip(scores_a, scores_b, strict=True)):
        pairs.a[f"e{k}"] = _row(f"e{k}", sa, frozenset({"ecg.mi"}) if sa >= 0.5 else frozenset())
        pairs.b[f"e{k}"] = _row(f"e{k}", sb, frozenset({"ecg.mi"}) if sb >= 0.5 else frozenset(),
                                status="reject" if k == 3 else "pass")
    labels = {f"e{k}": {"ecg.mi": k in (0, 1, 4)} for k in range(6)}
    s = summarise(pairs, labels)
    mi = s["tasks"]["ecg.mi"]
    assert (mi["alerts_a"], mi["alerts_b"], mi["change"]) == (3, 3, 0)
    assert mi["examples_on"] == ["e2"] and mi["examples_off"] == ["e1"]
    assert mi["auroc_a"] == 1.0 and mi["auroc_b"] < 1.0 and mi["positives"] == 3
    assert s["gate"]["status_changes"] == {"pass->reject": 1}
    out = write(tmp_path / "r", pairs, labels, "ecgscreen replay ...")
    assert out == orjson.loads((tmp_path / "r" / "summary.json").read_bytes())
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| ecg.mi | 3 | 3 | +0 | 1 | 1 |" in md and "![scores_scatter.png](scores_scatter.png)" in md
    assert all((tmp_path / "r" / p).stat().st_size > 1000 for p in ("alerts.png", "scores_scatter.png",
                                                                     "scores_hist.png"))
