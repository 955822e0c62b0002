"""Signal-quality gate: decides per record whether an ECG is fit for the model.

Pure, vectorised functions on (B, L, N) float arrays in mV with an explicit sampling rate;
see :mod:`workers.gate._config` for the reason codes, thresholds and the record rule.
"""

from ._config import DEFAULT_CONFIG, GateConfig, GateInputError, QualityReason, RecordQuality
from ._gate import beat_templates, gate_batch, gate_record

__all__ = [
    "DEFAULT_CONFIG",
    "GateConfig",
    "GateInputError",
    "QualityReason",
    "RecordQuality",
    "beat_templates",
    "gate_batch",
    "gate_record",
]
