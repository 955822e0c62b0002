"""Echo and rare-disease targets as data (``echo_catalog.json``), and the rules that turn echo rows into labels.

The JSON is the one source of every definition, threshold and prevalence here: ``models.catalog``
builds its echo and rare ``TaskSpec`` rows from it and ``ecgscreen train link-echo`` derives labels
with :func:`derive_labels`. Rules, all inclusive where the definition says "<=" or ">=":

* ``measurement``: a number compared with ``op`` (``<=``, ``>=``, ``<``, ``>``) to ``value``;
* ``grade``: an ordered grade (``scales``) at or above ``at_least`` ("moderate" counts "moderate_severe");
* ``diagnosis``: a yes/no column (1/0, true/false, yes/no, y/n);
* ``any``: positive if any listed task is positive, negative only when every one is known negative.

A missing or unreadable value gives an UNKNOWN label (NaN), never a negative: an echo that did not
measure PASP says nothing about pulmonary hypertension, and training on it as negative would teach
the head that missing means healthy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from models.config import LABEL_SOURCES, ModelConfigError, TaskSpec
from schemas.messages import TaskGroup

CATALOG_FILE = Path(__file__).with_name("echo_catalog.json")
FORMAT = "ecgscreen.echo_catalog/1"
_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b}
_YES = frozenset({"1", "1.0", "true", "yes", "y", "t"})
_NO = frozenset({"0", "0.0", "false", "no", "n", "f"})

Row = Mapping[str, object]


@dataclass(frozen=True)
class Rule:
    kind: str  # measurement | grade | diagnosis | any
    column: str | None = None
    op: str | None = None
    value: float | None = None
    unit: str | None = None
    scale: str | None = None
    at_least: str | None = None
    of: tuple[str, ...] = ()


@dataclass(frozen=True)
class EchoTarget:
    """One catalog target: its TaskSpec defaults plus how its labels are made and where its prevalence comes from."""

    spec: TaskSpec
    definition: str
    rule: Rule
    label_source: str
    prevalence_source: str
    echonext_column: str | None

    @property
    def columns(self) -> tuple[str, ...]:
        return () if self.rule.column is None else (self.rule.column,)


@dataclass(frozen=True)
class EchoCatalog:
    targets: tuple[EchoTarget, ...]
    scales: Mapping[str, tuple[str, ...]]
    aliases: Mapping[str, str]

    def target(self, task_id: str) -> EchoTarget:
        for t in self.targets:
            if t.spec.id == task_id:
                return t
        raise ModelConfigError(f"no echo/rare target {task_id!r} in {CATALOG_FILE.name}", reason="unknown_task")

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(t.spec.id for t in self.targets)

    def echonext_columns(self) -> dict[str, str]:
        """EchoNext label column -> task id, for the 12 targets EchoNext labels."""
        return {t.echonext_column: t.spec.id for t in self.targets if t.echonext_column}

    def measurement_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for t in self.targets for c in t.columns))


def _need(ok: bool, detail: str) -> None:
    if not ok:
        raise ModelConfigError(f"{CATALOG_FILE.name}: {detail}")


def _target(raw: Mapping[str, Any], scales: Mapping[str, tuple[str, ...]]) -> EchoTarget:
    rule_raw = dict(raw["rule"])
    rule = Rule(**{**rule_raw, "of": tuple(rule_raw.get("of", ()))})
    _need(rule.kind in ("measurement", "grade", "diagnosis", "any"), f"{raw['id']}: unknown rule {rule.kind!r}")
    if rule.kind == "measurement":
        _need(rule.op in _OPS and isinstance(rule.value, int | float), f"{raw['id']}: bad measurement rule")
    if rule.kind == "grade":
        _need(rule.scale in scales and rule.at_least in scales[str(rule.scale)], f"{raw['id']}: bad grade rule")
    _need(raw["label_source"] in LABEL_SOURCES, f"{raw['id']}: unknown label_source {raw['label_source']!r}")
    spec = TaskSpec(id=raw["id"], name=raw["name"], group=TaskGroup(raw["group"]), threshold=raw["threshold"],
                    alert=raw["alert"], prevalence=raw["prevalence"], description=raw["definition"])
    return EchoTarget(spec, raw["definition"], rule, raw["label_source"], raw["prevalence_source"],
                      raw.get("echonext_column"))


@cache
def load_echo_catalog(path: Path = CATALOG_FILE) -> EchoCatalog:
    """Parse and check the catalog (cached: it is package data and never changes at run time)."""
    doc = orjson.loads(path.read_bytes())
    _need(doc.get("format") == FORMAT, f"format must be {FORMAT!r}")
    scales = {k: tuple(v) for k, v in doc["scales"].items()}
    targets = tuple(_target(t, scales) for t in doc["tasks"])
    ids = [t.spec.id for t in targets]
    _need(len(set(ids)) == len(ids), "duplicate task ids")
    for t in targets:
        _need(all(i in ids and i != t.spec.id for i in t.rule.of), f"{t.spec.id}: composite names unknown tasks")
        _need(t.spec.group in (TaskGroup.ECHO, TaskGroup.RARE), f"{t.spec.id}: group must be echo or rare")
    return EchoCatalog(targets, scales, dict(doc.get("scale_aliases", {})))


# --- labels from one echo row ----------------------------------------------------------------------


def _number(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(str(value).strip()) if not isinstance(value, int | float) else float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _grade_rank(value: object, scale: tuple[str, ...], aliases: Mapping[str, str]) -> int | None:
    if value is None:
        return None
    word = str(value).strip().lower().replace(" ", "_")
    if word in ("", "nan", "na", "n/a", "not_assessed", "unknown"):
        return None
    if word not in scale:
        word = aliases.get(word.replace("_", " "), aliases.get(word, word))
    return scale.index(word) if word in scale else None


def _flag(value: object) -> float:
    word = "" if value is None else str(value).strip().lower()
    return 1.0 if word in _YES else 0.0 if word in _NO else math.nan


def rule_label(rule: Rule, row: Row, cat: EchoCatalog, done: Mapping[str, float]) -> float:
    """1.0, 0.0, or NaN (unknown) for one rule on one row; ``done`` holds the labels already derived."""
    if rule.kind == "any":
        parts = [done[i] for i in rule.of]
        if any(p == 1.0 for p in parts):
            return 1.0
        return 0.0 if all(p == 0.0 for p in parts) else math.nan
    value = row.get(str(rule.column))
    if rule.kind == "diagnosis":
        return _flag(value)
    if rule.kind == "measurement":
        x = _number(value)
        return math.nan if x is None else float(_OPS[str(rule.op)](x, float(rule.value or 0.0)))
    scale = cat.scales[str(rule.scale)]
    rank = _grade_rank(value, scale, cat.aliases)
    return math.nan if rank is None else float(rank >= scale.index(str(rule.at_least)))


def derive_labels(row: Row, cat: EchoCatalog | None = None) -> dict[str, float]:
    """Every catalog target's label for one echo study row (composites after their parts)."""
    cat = cat or load_echo_catalog()
    out: dict[str, float] = {}
    for t in sorted(cat.targets, key=lambda t: t.rule.kind == "any"):
        out[t.spec.id] = rule_label(t.rule, row, cat, out)
    return {t.spec.id: out[t.spec.id] for t in cat.targets}


def echo_task_specs() -> tuple[TaskSpec, ...]:
    """The catalog's echo and rare targets as TaskSpecs with the catalog defaults (no label source: untrained)."""
    return tuple(t.spec for t in load_echo_catalog().targets)
