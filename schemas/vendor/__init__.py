"""Vendor ECG exports (GE MUSE, Philips SierraECG, HL7 aECG, DICOM, SCP-ECG, WFDB) -> ``ecg.event/v1``.

One module per format decodes a file into a :class:`VendorECG`; :mod:`schemas.vendor.convert`
builds the validated events through :mod:`schemas.codec`.
"""

from schemas.vendor._common import LEAD_ALIASES, IntakeError, IntakeReason, VendorECG, VendorFormat
from schemas.vendor.convert import (
    Conversion,
    ConvertedEvent,
    FormatChoice,
    IntakeContext,
    convert_file,
    decode_bytes,
    decode_file,
    patient_ref,
    sniff,
    to_events,
    windows,
)

__all__ = [
    "LEAD_ALIASES",
    "Conversion",
    "ConvertedEvent",
    "FormatChoice",
    "IntakeContext",
    "IntakeError",
    "IntakeReason",
    "VendorECG",
    "VendorFormat",
    "convert_file",
    "decode_bytes",
    "decode_file",
    "patient_ref",
    "sniff",
    "to_events",
    "windows",
]
