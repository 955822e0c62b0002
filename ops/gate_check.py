"""`ecgscreen gate check`: the gate against PTB-XL's noise annotations, neurokit2, and synthetic faults.

Reads the PTB-XL subset in ``--data-dir`` at one rate and reports:

1. per annotation column (mapped to gate reasons, see :mod:`workers.gate.evaluate`):
   record-level sensitivity / specificity / balanced accuracy and counts, and lead-level
   precision / recall of the annotation's named leads, for the gate and for neurokit2's
   ``ecg_quality(method="zhao2018")`` per lead ("Unacceptable" or "Barely acceptable" =
   flagged; it has no reasons, so any flagged lead counts for every column). Both on the
   same records: neurokit2 costs ~15-100 ms per lead, so it runs on ``--limit`` records
   (up to half of them annotated, the rest without annotation, seeded); the gate is also
   reported on every record;
2. the false-reject rate on records without any annotation;
3. detection of synthetic corruptions injected into those records, with the right reason.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from workers.gate import DEFAULT_CONFIG, GateConfig, RecordQuality, _precordial, gate_batch
from workers.gate import evaluate as ev

BATCH = 64
# int16 samples at 1000 ADC units per mV (every PTB-XL record): the ADC rails in mV.
PTBXL_RAILS_MV = (-32.768, 32.767)


@dataclass(frozen=True)
class Dataset:
    x_mv: NDArray[np.float32]  # (R, L, N)
    fs: float
    leads: tuple[str, ...]
    ecg_ids: NDArray[np.int64]
    annotations: dict[str, list[ev.Annotation]]  # column -> one per record

    @property
    def annotated(self) -> NDArray[np.bool_]:
        """(R, C) record annotated in each column of ``annotations``."""
        cols = [[a.present for a in anns] for anns in self.annotations.values()]
        return np.array(cols, dtype=bool).reshape(len(cols), -1).T

    @property
    def any_annotation(self) -> NDArray[np.bool_]:
        return np.asarray(self.annotated.any(axis=-1), dtype=bool)


def load_ptbxl(data_dir: Path, rate: int, records: int | None = None) -> Dataset:
    """The npz of ``rate`` Hz (its first ``records`` rows) with their annotations from the csv."""
    with np.load(data_dir / f"ptbxl_folds1-8_{rate}hz.npz") as z:
        first = slice(None, records)
        x = np.ascontiguousarray(z["signals"][first].transpose(0, 2, 1), dtype=np.float32) / np.float32(1000.0)
        ids, fs, leads = z["ecg_id"][first].astype(np.int64), float(z["fs"]), tuple(str(n) for n in z["lead_names"])
    with open(data_dir / "ptbxl_folds1-8_metadata.csv", newline="", encoding="utf-8") as f:
        meta = {int(float(r["ecg_id"])): r for r in csv.DictReader(f)}
    annotations = {c: [ev.parse_annotation(meta.get(int(i), {}).get(c, "")) for i in ids]
                   for c in ev.ANNOTATION_COLUMNS}
    return Dataset(x, fs, leads, ids, annotations)


def rails_for(batch: int, leads: int) -> NDArray[np.float32]:
    return np.tile(np.array(PTBXL_RAILS_MV, dtype=np.float32), (batch, leads, 1))


def run_gate(x: NDArray[np.float32], fs: float, leads: Sequence[str], cfg: GateConfig = DEFAULT_CONFIG,
             rails: bool = True) -> list[RecordQuality]:
    out: list[RecordQuality] = []
    for start in range(0, x.shape[0], BATCH):
        chunk = x[start : start + BATCH]
        out += gate_batch(chunk, fs, leads, cfg, rails_for(*chunk.shape[:2]) if rails else None)
    return out


NK_CODES = {"Excellent": 0, "Barely acceptable": 1, "Unacceptable": 2}


def neurokit_verdicts(x: NDArray[np.float32], fs: float) -> tuple[NDArray[np.int8], int]:
    """(R, L) neurokit2 zhao2018 verdict per lead (0 Excellent, 1 Barely, 2 Unacceptable), failures.

    The naive loop: ``ecg_clean`` then ``ecg_quality`` per lead, per record. A lead neurokit2
    cannot process (it raises, e.g. no R peaks) counts as Unacceptable.
    """
    import neurokit2 as nk

    codes = np.zeros(x.shape[:2], dtype=np.int8)
    failures = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(x.shape[0]):
            for k in range(x.shape[1]):
                try:
                    cleaned = nk.ecg_clean(x[r, k].astype(np.float64), sampling_rate=int(fs))
                    codes[r, k] = NK_CODES.get(nk.ecg_quality(cleaned, sampling_rate=int(fs), method="zhao2018"), 2)
                except Exception:  # neurokit2 raises on leads it cannot read: that is a verdict too
                    codes[r, k], failures = 2, failures + 1
    return codes, failures


def baseline_subset(columns: NDArray[np.bool_], limit: int, seed: int) -> NDArray[np.int64]:
    """Up to ``limit`` record indices, sorted: up to half annotated, the rest not (seeded).

    ``columns`` is (R, C): record r annotated in column c. Annotated records are taken
    rarest column first (ties at random), so that a column with a handful of records keeps
    all of them instead of the one or two a random draw would leave.
    """
    rng = np.random.default_rng(seed)
    annotated = columns.any(axis=-1)
    pos, neg = np.flatnonzero(annotated), np.flatnonzero(~annotated)
    counts = columns.sum(axis=0)
    rarest = np.where(columns[pos], counts[None, :], np.iinfo(np.int64).max).min(axis=-1)
    ordered = pos[np.lexsort((rng.random(len(pos)), rarest))]
    n_pos = min(len(pos), limit // 2)
    n_neg = min(len(neg), limit - n_pos)
    n_pos = min(len(pos), limit - n_neg)
    picked = np.concatenate([ordered[:n_pos], rng.choice(neg, n_neg, replace=False)])
    return np.sort(picked.astype(np.int64))


def _gate_lead_flags(qualities: Sequence[RecordQuality], reasons: Sequence[Any]) -> NDArray[np.bool_]:
    return ev.reason_flags([q.lead_reasons for q in qualities], reasons)


def _column_figures(truth_rec: NDArray[np.bool_], truth_lead: NDArray[np.bool_], named: NDArray[np.bool_],
                    lead_flags: NDArray[np.bool_]) -> dict[str, Any]:
    """Record-level agreement, plus lead-level on records whose annotation names leads (or none)."""
    record = ev.agreement(truth_rec, np.asarray(lead_flags.any(axis=-1), dtype=bool))
    usable = named | ~truth_rec  # annotated-without-leads records cannot be scored per lead
    lead = ev.agreement(truth_lead[usable], lead_flags[usable])
    return {"record": record.as_dict(), "lead": lead.as_dict()}


def annotation_figures(ds: Dataset, rows: NDArray[np.int64], gate_q: Sequence[RecordQuality],
                       nk_flags: NDArray[np.bool_] | None) -> dict[str, Any]:
    """Per annotation column, figures of the gate (and neurokit2) on records ``rows``."""
    out: dict[str, Any] = {}
    for column, reasons in ev.ANNOTATION_REASONS.items():
        anns = [ds.annotations[column][r] for r in rows]
        truth_rec = np.array([a.present for a in anns], dtype=bool)
        named = np.array([a.present and bool(a.leads) for a in anns], dtype=bool)
        truth_lead = ev.annotation_lead_mask(anns, ds.leads)
        gate_flags = _gate_lead_flags([gate_q[r] for r in rows], reasons)
        entry = {"reasons": [r.value for r in reasons],
                 "gate": _column_figures(truth_rec, truth_lead, named, gate_flags)}
        if nk_flags is not None:
            entry["neurokit2"] = _column_figures(truth_rec, truth_lead, named, nk_flags)
        out[column] = entry
    return out


_PRECORDIAL_KINDS = (ev.Corruption.PRECORDIAL_SWAP_DISTANT, ev.Corruption.PRECORDIAL_SWAP_ADJACENT)


def synthetic_figures(ds: Dataset, clean: NDArray[np.int64], seed: int, cfg: GateConfig) -> dict[str, Any]:
    """Detection rate per corruption kind over the clean records (one injection each).

    Precordial swaps are injected only into records the precordial-order model was not
    fitted on (at 100 Hz the fitting records are among the clean ones).
    """
    out: dict[str, Any] = {}
    fitted = np.isin(ds.ecg_ids, _precordial.shipped_model().provenance.get("ecg_ids", []))
    for kind in ev.Corruption:
        if ds.fs < ev.MIN_RATE_HZ.get(kind, 0.0):
            out[kind.value] = {"n": 0, "detected": None, "note": f"not measurable at {ds.fs:g} Hz"}
            continue
        rng = np.random.default_rng([seed, list(ev.Corruption).index(kind)])
        rows = clean[~fitted[clean]] if kind in _PRECORDIAL_KINDS else clean
        injected = [ev.inject(ds.x_mv[r], ds.fs, list(ds.leads), kind, rng) for r in rows]
        qs = run_gate(np.stack([i.signal for i in injected]), ds.fs, ds.leads, cfg)
        hits = [ev.detected(i, q.reasons, q.lead_reasons) for i, q in zip(injected, qs, strict=True)]
        out[kind.value] = {"n": len(hits), "detected": float(np.mean(hits)), "expected": ev.EXPECTED[kind].value,
                           "rejected": float(np.mean([q.status.value == "reject" for q in qs])),
                           "level": ev.CORRUPTION_LEVELS[kind]}
    return out


def false_reject(qualities: Sequence[RecordQuality]) -> dict[str, float | int]:
    status = [q.status.value for q in qualities]
    n = len(status)
    return {"n": n, "rejected": status.count("reject") / n if n else math.nan,
            "degraded": status.count("degraded") / n if n else math.nan}


def run_check(data_dir: Path, rate: int, limit: int, seed: int = 0, cfg: GateConfig = DEFAULT_CONFIG,
              baseline: bool = True, records: int | None = None) -> dict[str, Any]:
    """Every figure of the report (see the module docstring) as one JSON-able dict."""
    ds = load_ptbxl(data_dir, rate, records)
    gate_q = run_gate(ds.x_mv, ds.fs, ds.leads, cfg)
    annotated = ds.any_annotation
    clean = np.flatnonzero(~annotated)
    rows = baseline_subset(ds.annotated, limit, seed)
    nk_codes, nk_fail = neurokit_verdicts(ds.x_mv[rows], ds.fs) if baseline else (None, 0)
    nk_flags = None if nk_codes is None else nk_codes >= 1
    nk_clean = None if nk_codes is None else nk_codes[~annotated[rows]]
    return {
        "rate_hz": ds.fs, "records": len(gate_q), "annotated": int(annotated.sum()), "clean": len(clean),
        "baseline_records": len(rows), "baseline_annotated": int(annotated[rows].sum()),
        "neurokit2_failures": nk_fail, "seed": seed,
        "same_records": annotation_figures(ds, rows, gate_q, nk_flags),
        "all_records": annotation_figures(ds, np.arange(len(gate_q)), gate_q, None),
        "clean_gate": false_reject([gate_q[r] for r in clean]),
        "clean_neurokit2": None if nk_clean is None else {
            "n": len(nk_clean),
            "any_lead_unacceptable": float((nk_clean >= 2).any(axis=-1).mean()) if len(nk_clean) else math.nan,
            "any_lead_flagged": float((nk_clean >= 1).any(axis=-1).mean()) if len(nk_clean) else math.nan,
        },
        "synthetic": synthetic_figures(ds, clean, seed, cfg),
    }


# --- text report -------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def _row(column: str, maps: str, method: str, fig: dict[str, Any]) -> str:
    rec, lead = fig["record"], fig["lead"]
    return (f"{column:20s} {maps:34s} {method:9s} {rec['tp'] + rec['fn']:4d} {rec['tn'] + rec['fp']:4d} "
            f"{_pct(rec['sensitivity'])} {_pct(rec['specificity'])} {_pct(rec['balanced_accuracy'])}  "
            f"{_pct(lead['precision'])} {_pct(lead['sensitivity'])}")


_HEADER = (f"{'annotation':20s} {'gate reasons':34s} {'method':9s} {'ann':>4s} {'not':>4s} {'sens%':>5s} "
           f"{'spec%':>5s} {'BA%':>5s}  {'Lprec':>5s} {'Lrec%':>5s}")


def _agreement_lines(figures: dict[str, Any]) -> list[str]:
    lines = [_HEADER]
    for column, entry in figures.items():
        maps = ",".join(entry["reasons"])
        maps = maps if len(maps) <= 34 else maps[:31] + "..."
        lines.append(_row(column, maps, "gate", entry["gate"]))
        if "neurokit2" in entry:
            lines.append(_row("", "", "neurokit2", entry["neurokit2"]))
    return lines


def verdicts(figures: dict[str, Any]) -> dict[str, bool | None]:
    """Per column: gate balanced accuracy >= neurokit2's (None where either has no answer)."""
    out: dict[str, bool | None] = {}
    for column, entry in figures.items():
        g = entry["gate"]["record"]["balanced_accuracy"]
        n = entry.get("neurokit2", {}).get("record", {}).get("balanced_accuracy", math.nan)
        out[column] = None if math.isnan(g) or math.isnan(n) else bool(g >= n - 1e-12)
    return out


def _synthetic_lines(synthetic: dict[str, Any]) -> list[str]:
    lines = [f"{'corruption':25s} {'expected reason':22s} {'n':>4s} {'detect%':>7s} {'reject%':>7s}  level"]
    for kind, s in synthetic.items():
        if s["detected"] is None:
            lines.append(f"{kind:25s} {'':22s} {0:4d} {'n/a':>7s} {'n/a':>7s}  {s['note']}")
            continue
        lines.append(f"{kind:25s} {s['expected']:22s} {s['n']:4d} {_pct(s['detected']):>7s} "
                     f"{_pct(s['rejected']):>7s}  {s['level']}")
    return lines


def format_report(r: dict[str, Any]) -> str:
    nk = r["clean_neurokit2"]
    ok = verdicts(r["same_records"])
    lines = [
        f"gate check: PTB-XL {r['rate_hz']:g} Hz, {r['records']} records "
        f"({r['annotated']} with a noise annotation, {r['clean']} without)",
        "",
        f"Agreement with the annotations, gate vs neurokit2 ecg_quality(zhao2018) per lead on the SAME "
        f"{r['baseline_records']} records ({r['baseline_annotated']} annotated, rarest column first, the "
        f"rest drawn with seed {r['seed']}; --limit sets how many; neurokit2 failures counted as "
        f"Unacceptable: {r['neurokit2_failures']}).",
        "Record level: flagged = a mapped reason on any lead (gate) / any lead Unacceptable or Barely "
        "acceptable (neurokit2). BA = balanced accuracy = (sens + spec) / 2.",
        "Lead level (records whose annotation names leads, and records without it): Lprec/Lrec = "
        "precision/recall of flagged leads against the named leads.",
        *_agreement_lines(r["same_records"]),
        "gate BA >= neurokit2 BA: " + ", ".join(f"{c} {'yes' if v else 'NO' if v is False else 'n/a'}"
                                               for c, v in ok.items()),
        "",
        f"Gate on all {r['records']} records:",
        *_agreement_lines(r["all_records"]),
        "",
        f"Records without any annotation: gate rejects {_pct(r['clean_gate']['rejected']).strip()}% "
        f"(degrades {_pct(r['clean_gate']['degraded']).strip()}%) of {r['clean_gate']['n']}",
    ]
    if nk is not None:
        lines.append(f"  neurokit2 on the {nk['n']} of them in the subset: any lead Unacceptable "
                     f"{_pct(nk['any_lead_unacceptable']).strip()}%, any lead flagged "
                     f"{_pct(nk['any_lead_flagged']).strip()}%")
    lines += ["", f"Synthetic corruptions injected into the {r['clean']} records without annotation "
              "(detected = expected reason on every injected lead, or on the record):",
              *_synthetic_lines(r["synthetic"])]
    return "\n".join(lines)
