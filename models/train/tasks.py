"""Which PTB-XL labels become which tasks, under which ids.

Tasks are the five diagnostic superclasses plus every SCP statement with at least
``min_train_pos`` positive training records and ``min_val_pos`` positive validation records
(any likelihood, as PTB-XL's benchmark counts them). Catalog ids (``models.catalog.PTBXL_LABELS``)
are used where the catalog has the label, with the catalog's name, alerting default and
prevalence; other statements get ``ecg.<code>`` (lower case, ``/`` -> ``_``, trailing ``_`` dropped)
and never alert, because the catalog has not vetted them for alerting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.catalog import PTBXL_LABELS, catalog_task
from models.config import TaskSpec
from models.train.data import PTBXLSet, Split, Statement
from schemas.errors import ECGScreenError
from schemas.messages import TaskGroup

SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")
SUPERCLASS_TASKS: tuple[str, ...] = ("ecg.norm", "ecg.mi", "ecg.sttc", "ecg.cd", "ecg.hyp")
PLACEHOLDER_THRESHOLD = 0.5  # replaced by the threshold chosen on validation

LabelKind = Literal["superclass", "statement"]


class TaskError(ECGScreenError):
    def __init__(self, detail: str) -> None:
        super().__init__("unknown_task", detail)


@dataclass(frozen=True)
class TaskLabel:
    """A task and the PTB-XL label that trains it."""

    spec: TaskSpec
    code: str
    kind: LabelKind


def task_id_for(code: str, kind: LabelKind) -> str:
    for task_id, label in PTBXL_LABELS.items():
        if label == code and (label in SUPERCLASSES) == (kind == "superclass"):
            return task_id
    return "ecg." + re.sub(r"[^a-z0-9]+", "_", code.lower()).strip("_")


def labels_of(ds: PTBXLSet, code: str, kind: LabelKind) -> npt.NDArray[np.bool_]:
    sets = ds.superclasses if kind == "superclass" else ds.codes
    return np.array([code in s for s in sets], dtype=bool)


def label_matrix(ds: PTBXLSet, tasks: Sequence[TaskLabel]) -> npt.NDArray[np.float32]:
    """(N, T) 0/1 labels in task order."""
    return np.stack([labels_of(ds, t.code, t.kind) for t in tasks], axis=1).astype(np.float32)


def _spec(task_id: str, code: str, statement: Statement | None, prevalence: float) -> TaskSpec:
    if task_id in PTBXL_LABELS:
        return catalog_task(task_id)
    desc = statement.description if statement else code
    # Training-subset prevalence stands in for the intended population's: the catalog has none.
    prev = float(np.clip(prevalence, 1e-4, 1 - 1e-4))
    return TaskSpec(id=task_id, name=desc[:1].upper() + desc[1:], group=TaskGroup.ECG,
                    threshold=PLACEHOLDER_THRESHOLD, alert=False, prevalence=prev,
                    description=f"PTB-XL SCP statement {code}; prevalence from the PTB-XL training subset")


def statement_task(code: str, statement: Statement | None, prevalence: float) -> TaskLabel:
    """The task an SCP statement trains: the catalog's where it has one, else ``ecg.<code>`` (no alert)."""
    return TaskLabel(_spec(task_id_for(code, "statement"), code, statement, prevalence), code, "statement")


def select_tasks(ds: PTBXLSet, split: Split, statements: Mapping[str, Statement],
                 min_train_pos: int, min_val_pos: int) -> tuple[TaskLabel, ...]:
    """Superclasses first (always), then qualifying statements by descending training count."""
    tasks = [TaskLabel(catalog_task(t), c, "superclass") for t, c in zip(SUPERCLASS_TASKS, SUPERCLASSES, strict=True)]
    taken = {t.spec.id for t in tasks}
    train, val = ds.subset(split.train), ds.subset(split.val)
    counts = {c: int(labels_of(train, c, "statement").sum()) for c in sorted({c for cs in train.codes for c in cs})}
    for code in sorted(counts, key=lambda c: (-counts[c], c)):
        task = statement_task(code, statements.get(code), counts[code] / len(train))
        enough = counts[code] >= min_train_pos and labels_of(val, code, "statement").sum() >= min_val_pos
        if enough and task.spec.id not in taken:
            tasks.append(task)
            taken.add(task.spec.id)
    return tuple(tasks)


def labels_for_tasks(specs: Sequence[TaskSpec], statements: Mapping[str, Statement]) -> tuple[TaskLabel, ...]:
    """The PTB-XL label behind each task of a bundle (for evaluation); TaskError if one has none."""
    by_id: dict[str, tuple[str, LabelKind]] = {t: (c, "superclass") for t, c in zip(SUPERCLASS_TASKS, SUPERCLASSES,
                                                                                      strict=True)}
    for code in statements:
        by_id.setdefault(task_id_for(code, "statement"), (code, "statement"))
    for task_id, code in PTBXL_LABELS.items():
        by_id.setdefault(task_id, (code, "superclass" if code in SUPERCLASSES else "statement"))
    missing = [s.id for s in specs if s.id not in by_id]
    if missing:
        raise TaskError(f"no PTB-XL label for task(s) {missing}")
    return tuple(TaskLabel(s, *by_id[s.id]) for s in specs)
