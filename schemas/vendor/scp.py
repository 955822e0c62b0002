"""SCP-ECG (EN 1064 / ISO 11073-91064)."""

from __future__ import annotations

from schemas.vendor._common import IntakeError, IntakeReason, VendorECG


def looks_like_scp(data: bytes) -> bool:
    """A record CRC, then the record length (little-endian) equal to the file size, then section 0."""
    return len(data) > 22 and int.from_bytes(data[2:6], "little") == len(data) and data[8:10] == b"\x00\x00"


def read_scp(data: bytes) -> VendorECG:
    raise IntakeError(IntakeReason.UNSUPPORTED_ENCODING, "SCP-ECG decoding is not built yet")
