"""Synthetic cohort from PTB-XL -> link -> shards -> embeddings -> echo heads -> bundle -> policy, triage, FHIR."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.bundle import load_bundle
from models.echo_catalog import load_echo_catalog
from models.engine import make_engine
from models.train.echo import heads as hd
from models.train.echo.link import echo_studies, link
from models.train.echo.shard import ShardDataset, read_index, write_shards
from models.train.echo.synth import build_cohort
from models.train.echo.tables import read_event_refs, read_table
from ops.triage_cmd import item_line
from schemas.messages import ECGEvent, Quality, QualityStatus, Source, TaskGroup
from tests.triage_factory import new_prefix, store
from workers.fhir import alert_bundle
from workers.policy import PolicyConfig, decide_alerts, synthetic_label_tasks
from workers.settings import DEFAULT_BUNDLE

TASKS = ("echo.lvef_le_45", "echo.lvh_wall_ge_13mm")
SMALL = hd.ProbeSettings(min_train_pos=5, min_val_pos=2, l2_grid=(1e-2, 1.0), cv_folds=2)


@pytest.fixture(scope="module")
def echo_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("echo")
    summary = build_cohort(shared_data, root / "cohort", seed=0, limit=900)
    refs = list(read_event_refs(root / "cohort" / "events.jsonl"))
    studies = echo_studies(read_table(root / "cohort" / "echo.csv"), "patient_ref", "study_time")
    rows = link(refs, studies, fractions=(0.6, 0.2, 0.2))
    base = load_bundle(DEFAULT_BUNDLE)
    tasks = load_echo_catalog().task_ids
    meta = write_shards([root / "cohort" / "events.jsonl"], rows, tasks, base.config.input, root / "shards", 128)
    z = hd.embed_shards(root / "shards", base.model, batch=64, workers=1).astype(np.float64)
    index = read_index(root / "shards")
    fits, skipped = hd.fit_heads(z, index, TASKS, "synthetic", SMALL)
    sha = hd.echo_bundle(base, fits, root / "bundle", name="echo-test", version="0", provenance={"data": "synthetic"})
    return {"summary": summary, "rows": rows, "meta": meta, "index": index, "fits": fits, "skipped": skipped,
            "bundle": load_bundle(root / "bundle"), "sha": sha, "base": base, "root": root, "z": z}


def test_cohort_links_and_shards(echo_run: dict[str, Any]) -> None:
    s, rows, meta, index = echo_run["summary"], echo_run["rows"], echo_run["meta"], echo_run["index"]
    assert s["kind"] == "synthetic" and s["ecgs"] == 900 and s["studies"] > s["patients"]
    assert 0 < len(rows) < 900  # some echoes lie outside the 14-day window
    assert meta["records"] == len(rows) and sum(meta["shards"]) == len(rows) and meta["skipped"] == {}
    ds = ShardDataset(echo_run["root"] / "shards")
    x, y = ds[len(ds) - 1]
    assert tuple(x.shape) == (12, 1000) and y.shape[0] == len(index.tasks)
    assert index.ecg_id[-1] == rows[-1].ecg_id
    patients = {}
    for p, sp in zip(index.patient_ref, index.split, strict=True):
        assert patients.setdefault(p, sp) == sp


def test_heads_recover_the_planted_signal(echo_run: dict[str, Any]) -> None:
    fits = {f.spec.id: f for f in echo_run["fits"]}
    assert set(fits) == set(TASKS), echo_run["skipped"]
    for t, f in fits.items():
        assert f.spec.label_source == "synthetic" and f.spec.group is TaskGroup.ECHO
        assert f.spec.metrics is not None and f.spec.metrics.n_pos >= SMALL.min_val_pos
        # held out (test split, fitted on nothing): far above chance on a planted dependence
        assert f.summary["test"]["auroc"] > 0.7, (t, f.summary)


def test_bundle_scores_as_fitted_and_keeps_the_base_heads(echo_run: dict[str, Any]) -> None:
    b, base = echo_run["bundle"], echo_run["base"]
    assert b.sha256 == echo_run["sha"] and b.config.schema_version == 3
    assert b.config.task_ids == (*base.config.task_ids, *TASKS)
    assert {t.label_source for t in b.config.tasks[: len(base.config.tasks)]} == {"ecg_statement"}
    x = np.stack([ShardDataset(echo_run["root"] / "shards")[i][0].numpy() for i in range(4)])
    with torch.no_grad():
        logits, base_logits = (m(torch.from_numpy(x)).numpy() for m in (b.model, base.model))
    np.testing.assert_allclose(logits[:, : base_logits.shape[1]], base_logits, atol=1e-5)
    w, bias = echo_run["fits"][0].head
    np.testing.assert_allclose(logits[:, len(base.config.tasks)], echo_run["z"][:4] @ w + bias, atol=1e-3)


def test_synthetic_echo_alerts_pass_policy_triage_and_fhir(echo_run: dict[str, Any], redis_url: str) -> None:
    b = echo_run["bundle"]
    ds = ShardDataset(echo_run["root"] / "shards")
    probs = make_engine(b, "torch-cpu").infer(np.stack([ds[i][0].numpy() for i in range(len(ds))]))
    j = b.task_ids.index("echo.lvef_le_45")
    i = int(np.argmax(probs[:, j]))
    scores = dict(zip(b.task_ids, map(float, probs[i]), strict=True))
    now = datetime(2026, 11, 29, tzinfo=UTC)
    ev = ECGEvent(event_id=ds.index.ecg_id[i], patient_ref=ds.index.patient_ref[i], acquired_at=now,
                  source=Source("synthetic-echo-site"), sampling_rate_hz=100.0, leads=("I",),
                  signal_mv=np.zeros((1, 10), np.float32), age_years=70.0)
    passing = Quality(QualityStatus.PASS)
    assert synthetic_label_tasks(b.config.tasks, scores) == TASKS
    assert not [a for a in decide_alerts(ev, passing, scores, b.config.tasks, b.ref, now)
                if a.task.group is TaskGroup.ECHO]  # no setting, no echo alert
    allow = PolicyConfig(allow_synthetic_labels=True)
    degraded = decide_alerts(ev, Quality(QualityStatus.DEGRADED), scores, b.config.tasks, b.ref, now, config=allow)
    assert not [a for a in degraded if a.task.group is TaskGroup.ECHO]  # echo screens need quality pass
    alerts = [a for a in decide_alerts(ev, passing, scores, b.config.tasks, b.ref, now, config=allow)
              if a.task.id == "echo.lvef_le_45"]
    assert len(alerts) == 1 and "synthetic_labels" in alerts[0].flags
    assert alerts[0].expected_ppv is not None and not math.isnan(alerts[0].expected_ppv)
    risk = alert_bundle(alerts[0])["entry"][0]["resource"]
    assert {"system": "urn:ecgscreen:flag", "code": "synthetic_labels"} in risk["meta"]["tag"]

    async def go() -> str:
        s = store(redis_url, new_prefix(), allow)
        try:
            await s.add_alerts(alerts)
            [item] = await s.items("synthetic-echo-site")
            return item_line(item)
        finally:
            await s.close()

    assert "[SYNTHETIC LABELS]" in asyncio.run(go())
