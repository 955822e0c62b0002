"""The diff report of two scorings of the same events: Markdown, PNG plots (matplotlib), JSON.

``report.md`` reads in a browser or a merge request: per task alert counts and their change,
decision flips with example event ids, gate outcome changes, score correlation, and AUROC/PRAUC
of both where labels exist (PTB-XL input); ``summary.json`` holds the same figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.calibration import auroc, average_precision
from ops.replay.compare import Pairs, Row

EXAMPLES = 5


def summarise(pairs: Pairs, labels: Mapping[str, Mapping[str, bool]] | None = None) -> dict[str, Any]:
    matched = pairs.matched()
    tasks = sorted(set().union(*[set(a.scores) & set(b.scores) for a, b in matched])) if matched else []
    return {
        "a": {"name": pairs.a_name, "models": sorted({a.model for a, _ in matched})},
        "b": {"name": pairs.b_name, "models": sorted({b.model for _, b in matched})},
        "events_compared": len(matched), "only_in_b": len(set(pairs.b) - set(pairs.a)),
        "deadletters": pairs.deadletters,
        "gate": _gate(matched),
        "tasks": {t: _task(t, matched, labels) for t in tasks},
    }


def _gate(matched: Sequence[tuple[Row, Row]]) -> dict[str, Any]:
    changes = Counter(f"{a.status}->{b.status}" for a, b in matched if a.status != b.status)
    examples = [a.event_id for a, b in matched if (a.status, a.reasons) != (b.status, b.reasons)][:EXAMPLES]
    statuses = Counter(a.status for a, _ in matched)
    return {"status_a": dict(statuses), "status_changes": dict(changes),
            "reason_changes": sum(a.reasons != b.reasons for a, b in matched), "examples": examples}


def _task(task: str, matched: Sequence[tuple[Row, Row]], labels: Mapping[str, Mapping[str, bool]] | None,
          ) -> dict[str, Any]:
    rows = [(a, b) for a, b in matched if task in a.scores and task in b.scores]
    sa = np.array([a.scores[task] for a, _ in rows], np.float64)
    sb = np.array([b.scores[task] for _, b in rows], np.float64)
    on = [a.event_id for a, b in rows if task not in a.alerts and task in b.alerts]
    off = [a.event_id for a, b in rows if task in a.alerts and task not in b.alerts]
    n_a, n_b = sum(task in a.alerts for a, _ in rows), sum(task in b.alerts for _, b in rows)
    out: dict[str, Any] = {
        "n": len(rows), "alerts_a": n_a, "alerts_b": n_b, "change": n_b - n_a,
        "flips_on": len(on), "flips_off": len(off), "examples_on": on[:EXAMPLES], "examples_off": off[:EXAMPLES],
        "pearson": _corr(sa, sb), "spearman": _corr(_rank(sa), _rank(sb)),
        "mean_abs_delta": float(np.mean(np.abs(sa - sb))) if len(rows) else None,
        "median_a": float(np.median(sa)) if len(rows) else None,
        "median_b": float(np.median(sb)) if len(rows) else None,
    }
    if labels:
        keep = [k for k, (a, _) in enumerate(rows) if task in labels.get(a.event_id, {})]
        y = np.array([labels[rows[k][0].event_id][task] for k in keep], bool)
        if keep and 0 < y.sum() < len(y):
            out.update(positives=int(y.sum()), labelled=len(keep),
                       auroc_a=auroc(sa[keep], y), auroc_b=auroc(sb[keep], y),
                       prauc_a=average_precision(sa[keep], y), prauc_b=average_precision(sb[keep], y))
    return out


def _rank(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(np.float64)


def _corr(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def write(out: Path, pairs: Pairs, labels: Mapping[str, Mapping[str, bool]] | None = None,
          command: str = "") -> dict[str, Any]:
    """Write ``report.md``, ``summary.json`` and the plots into ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    s = summarise(pairs, labels)
    plots = _plots(out, pairs, s)
    (out / "summary.json").write_bytes(orjson.dumps(s, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    (out / "report.md").write_text("\n".join(_markdown(s, plots, command)) + "\n")
    return s


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _markdown(s: dict[str, Any], plots: Sequence[str], command: str) -> list[str]:
    a, b = s["a"], s["b"]
    lines = ["# Replay diff report", "",
             f"- **A** ({a['name']}): {', '.join(f'`{m}`' for m in a['models'])}",
             f"- **B** ({b['name']}): {', '.join(f'`{m}`' for m in b['models'])}",
             f"- events compared: {s['events_compared']}; dead letters: {s['deadletters']}; "
             f"scored by B only: {s['only_in_b']}"]
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    lines += ["", "## Alerts per task", "",
              "| task | alerts A | alerts B | change | flips off->on | flips on->off | Pearson r | Spearman | "
              "mean abs delta | AUROC A | AUROC B | PRAUC A | PRAUC B |", "|---" * 13 + "|"]
    for t, r in s["tasks"].items():
        lines.append(f"| {t} | {r['alerts_a']} | {r['alerts_b']} | {r['change']:+d} | {r['flips_on']} | "
                     f"{r['flips_off']} | {_f(r['pearson'])} | {_f(r['spearman'])} | {_f(r['mean_abs_delta'])} | "
                     f"{_f(r.get('auroc_a'))} | {_f(r.get('auroc_b'))} | {_f(r.get('prauc_a'))} | "
                     f"{_f(r.get('prauc_b'))} |")
    lines += ["", "AUROC/PRAUC use the records' PTB-XL labels where the source carries them "
              "(`-`: no labels, or one class only).", "", "## Decision flips (examples)", ""]
    for t, r in s["tasks"].items():
        if r["examples_on"] or r["examples_off"]:
            lines.append(f"- **{t}**: B alerts, A did not: {', '.join(f'`{e}`' for e in r['examples_on']) or '-'}; "
                         f"A alerted, B does not: {', '.join(f'`{e}`' for e in r['examples_off']) or '-'}")
    g = s["gate"]
    lines += ["", "## Gate outcomes", "", f"- A's statuses: {g['status_a']}",
              f"- status changes A->B: {g['status_changes'] or 'none'}; reason changes: {g['reason_changes']}"
              + (f" (e.g. {', '.join(g['examples'])})" if g["examples"] else ""), ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return lines


def _plots(out: Path, pairs: Pairs, s: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(s["tasks"])
    if not tasks:
        return []
    matched = pairs.matched()
    names = []
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(tasks)), 3.5))
    x = np.arange(len(tasks))
    ax.bar(x - 0.2, [s["tasks"][t]["alerts_a"] for t in tasks], 0.4, label=f"A ({pairs.a_name})")
    ax.bar(x + 0.2, [s["tasks"][t]["alerts_b"] for t in tasks], 0.4, label=f"B ({pairs.b_name})")
    ax.set_xticks(x, [t.removeprefix("ecg.") for t in tasks], rotation=45, ha="right")
    ax.set_ylabel("alerts")
    ax.set_title("Alerts per task")
    ax.legend()
    names.append(_save(fig, out / "alerts.png"))
    cols = min(5, len(tasks))
    rows_n = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(2.6 * cols, 2.6 * rows_n), squeeze=False)
    for k, t in enumerate(tasks):
        axx = axes[k // cols][k % cols]
        sa = [a.scores[t] for a, b in matched if t in a.scores and t in b.scores]
        sb = [b.scores[t] for a, b in matched if t in a.scores and t in b.scores]
        axx.scatter(sa, sb, s=4, alpha=0.5)
        axx.plot([0, 1], [0, 1], lw=0.5, color="grey")
        axx.set_title(f"{t.removeprefix('ecg.')} r={_f(s['tasks'][t]['pearson'], 2)}", fontsize=8)
        axx.set_xlim(0, 1)
        axx.set_ylim(0, 1)
        axx.tick_params(labelsize=6)
    for k in range(len(tasks), rows_n * cols):
        axes[k // cols][k % cols].axis("off")
    fig.supxlabel("score A")
    fig.supylabel("score B")
    names.append(_save(fig, out / "scores_scatter.png"))
    fig, axes = plt.subplots(rows_n, cols, figsize=(2.6 * cols, 2.2 * rows_n), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for k, t in enumerate(tasks):
        axx = axes[k // cols][k % cols]
        axx.hist([a.scores[t] for a, _ in matched if t in a.scores], bins, alpha=0.5, label="A")
        axx.hist([b.scores[t] for _, b in matched if t in b.scores], bins, alpha=0.5, label="B")
        axx.set_title(t.removeprefix("ecg."), fontsize=8)
        axx.tick_params(labelsize=6)
    for k in range(len(tasks), rows_n * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("score")
    names.append(_save(fig, out / "scores_hist.png"))
    return names


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def ptbxl_labels(data_dir: Path, task_ids: Sequence[str]) -> dict[str, dict[str, bool]]:
    """PTB-XL labels per event id (``ptbxl-<ecg_id>-<fs>hz``, as ops.feed names them) and task."""
    from models.train.data import parse_codes, read_metadata, read_statements
    from models.train.tasks import labels_for_tasks

    statements = read_statements(data_dir)
    meta = read_metadata(data_dir)
    from models.train.tasks import TaskError

    wanted: list[Any] = []
    for t in task_ids:
        try:
            wanted += labels_for_tasks([_Spec(t)], statements)  # type: ignore[list-item]
        except TaskError:  # a task PTB-XL has no label for: no AUROC for it
            continue
    out: dict[str, dict[str, bool]] = {}
    for ecg_id, m in meta.items():
        codes = set(parse_codes(m["scp_codes"]))
        supers = {c for c in m.get("diagnostic_superclass", "").split(";") if c}
        labels = {t.spec.id: (t.code in supers if t.kind == "superclass" else t.code in codes) for t in wanted}
        for fs in (100, 500):
            out[f"ptbxl-{ecg_id}-{fs}hz"] = labels
    return out


class _Spec:
    """The one field labels_for_tasks reads of a task spec."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
