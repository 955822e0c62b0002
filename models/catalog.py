"""The task catalog: every screening target we know how to name, as data.

Prevalences are rough, order-of-magnitude figures for an adult hospital ECG population
(PTB-XL frequencies for its superclasses/statements; published ECG-to-echo cohorts for echo
targets; epidemiology for rare disease). Thresholds are PLACEHOLDER operating points until a
trained model is calibrated on a validation fold; they are set lower for rarer, costlier-to-miss
targets because a screening alert is only a prompt for a confirmatory test. ``alert`` is True
only where a flag changes management and is not already obvious from the tracing; broad or
nonspecific targets (NORM, ST/T change, the echo composites) are scored for triage but never alert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from models.config import ModelConfigError, TaskSpec
from models.echo_catalog import echo_task_specs
from schemas.messages import TaskGroup

_E = TaskGroup.ECG

# (id, name, group, threshold, alert, prevalence, description)
_ROWS: tuple[tuple[str, str, TaskGroup, float, bool, float, str], ...] = (
    # PTB-XL diagnostic superclasses
    ("ecg.norm", "Normal ECG", _E, 0.5, False, 0.44, "PTB-XL superclass NORM"),
    # Scored, not alerting: PTB-XL's MI is mostly old infarction, known to the treating team; the
    # acute, actionable one is ecg.stemi. At a worklist point it would take ~4 flags per 100 ECGs.
    ("ecg.mi", "Myocardial infarction", _E, 0.5, False, 0.25, "PTB-XL superclass MI (acute or old)"),
    ("ecg.sttc", "ST/T change", _E, 0.5, False, 0.24, "PTB-XL superclass STTC; nonspecific, no alert"),
    ("ecg.cd", "Conduction disturbance", _E, 0.5, False, 0.22, "PTB-XL superclass CD"),
    ("ecg.hyp", "Hypertrophy", _E, 0.5, False, 0.12, "PTB-XL superclass HYP"),
    # ECG diagnoses (PTB-XL SCP statements unless noted)
    ("ecg.afib", "Atrial fibrillation", _E, 0.5, True, 0.07, "anticoagulation decision; paper PRAUC 0.900"),
    ("ecg.lvh", "Left ventricular hypertrophy (ECG criteria)", _E, 0.5, True, 0.10,
     "voltage criteria; routine: prompts blood-pressure review and echocardiography"),
    ("ecg.clbbb", "Complete left bundle branch block", _E, 0.4, True, 0.025, "new LBBB warrants work-up"),
    ("ecg.crbbb", "Complete right bundle branch block", _E, 0.5, False, 0.025, ""),
    # Not alerting: a PR-interval measurement every ECG machine prints exactly; the probe's
    # out-of-fold sensitivity at a worklist point is ~0.1 (see the model card).
    ("ecg.1avb", "First-degree AV block", _E, 0.5, False, 0.035, "PR > 200 ms; read from the measured PR"),
    ("ecg.pace", "Paced rhythm", _E, 0.5, False, 0.013, "eligibility: paced ECGs are excluded"),
    ("ecg.stemi", "ST-elevation myocardial infarction", _E, 0.3, True, 0.005, "not in PTB-XL; PRAUC 0.383"),
)

# Echo and rare-disease targets come from models/echo_catalog.json (definitions, label rules,
# prevalence sources), the one place ``ecgscreen train link-echo`` reads them from too.
CATALOG: tuple[TaskSpec, ...] = tuple(
    TaskSpec(id=i, name=n, group=g, threshold=t, alert=a, prevalence=p, description=d)
    for i, n, g, t, a, p, d in _ROWS
) + echo_task_specs()

# Which PTB-XL label trains each task: a superclass ("NORM") or an SCP statement code ("AFIB").
PTBXL_LABELS: Mapping[str, str] = MappingProxyType({
    "ecg.norm": "NORM", "ecg.mi": "MI", "ecg.sttc": "STTC", "ecg.cd": "CD", "ecg.hyp": "HYP",
    "ecg.afib": "AFIB", "ecg.lvh": "LVH", "ecg.clbbb": "CLBBB", "ecg.crbbb": "CRBBB",
    "ecg.1avb": "1AVB", "ecg.pace": "PACE",
})  # fmt: skip

# Zero-shot prompts: (positive, negative) report-style texts. The score is the similarity to the
# positive prompt minus that to the negative one, so the negative names what the finding is
# contrasted with (usually a normal report), not "no <finding>": contrastive text towers are
# notoriously blind to negation. Written in the English report style PTB-XL uses.
NORMAL_REPORT = "sinus rhythm. normal ecg."
PROMPTS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "ecg.norm": (NORMAL_REPORT, "abnormal ecg."),
    "ecg.mi": ("myocardial infarction.", NORMAL_REPORT),
    "ecg.sttc": ("st segment and t wave changes.", NORMAL_REPORT),
    "ecg.cd": ("conduction disturbance.", NORMAL_REPORT),
    "ecg.hyp": ("ventricular hypertrophy.", NORMAL_REPORT),
    "ecg.afib": ("atrial fibrillation.", NORMAL_REPORT),
    "ecg.lvh": ("left ventricular hypertrophy.", NORMAL_REPORT),
    "ecg.clbbb": ("complete left bundle branch block.", NORMAL_REPORT),
    "ecg.crbbb": ("complete right bundle branch block.", NORMAL_REPORT),
    "ecg.1avb": ("first degree av block. prolonged pr interval.", NORMAL_REPORT),
    "ecg.pace": ("pacemaker. paced rhythm.", NORMAL_REPORT),
    "ecg.stemi": ("acute st elevation myocardial infarction.", NORMAL_REPORT),
    "echo.lvef_le_40": ("reduced left ventricular ejection fraction.", NORMAL_REPORT),
    "echo.hcm": ("hypertrophic cardiomyopathy.", NORMAL_REPORT),
    "rare.dextrocardia": ("dextrocardia.", NORMAL_REPORT),
    "rare.amyloidosis": ("cardiac amyloidosis. low voltage.", NORMAL_REPORT),
})  # fmt: skip

# Heads of an untrained bundle: only targets PTB-XL can label (no echo or rare labels exist yet).
DEFAULT_TASK_IDS: tuple[str, ...] = tuple(PTBXL_LABELS)


def catalog_task(task_id: str) -> TaskSpec:
    """The catalog's defaults for ``task_id``; ``ModelConfigError(reason='unknown_task')`` if absent."""
    for task in CATALOG:
        if task.id == task_id:
            return task
    raise ModelConfigError(f"no task {task_id!r} in the catalog", reason="unknown_task")


def catalog_tasks(group: TaskGroup | None = None) -> tuple[TaskSpec, ...]:
    """All catalog tasks, or those of one group, in catalog order."""
    return tuple(t for t in CATALOG if group is None or t.group == group)


def default_tasks() -> tuple[TaskSpec, ...]:
    """The PTB-XL-labelled ECG tasks an untrained (or first trained) bundle carries."""
    return tuple(catalog_task(i) for i in DEFAULT_TASK_IDS)


def zero_shot_task(task_id: str) -> TaskSpec:
    """The catalog task scored zero-shot from its prompts (``unknown_task`` if it has none)."""
    task = catalog_task(task_id)
    if task_id not in PROMPTS:
        raise ModelConfigError(f"no zero-shot prompts for {task_id!r}", reason="unknown_task")
    pos, neg = PROMPTS[task_id]
    return dataclasses.replace(task, head="zero_shot", prompt=pos, negative_prompt=neg)
