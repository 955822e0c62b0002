"""SCP-ECG (EN 1064 / ISO 11073-91064), the binary format of many European carts.

Read: section 0 (pointers), 1 (header tags: patient ID, age, sex, acquisition date/time),
2 (Huffman tables: absent = raw 16-bit, or the standard's default table), 3 (lead definition)
and 6 (rhythm data: amplitude multiplier in nV, sample interval in us, none/first/second
differences). Refused with a reason: reference-beat subtraction (sections 4/5), bimodal
compression, custom Huffman tables, and any CRC or length that does not check out.
"""

from __future__ import annotations

import binascii
import struct
from datetime import datetime

import numpy as np

from schemas.messages import Sex
from schemas.vendor._common import (
    SCP_LEAD_NUMBERS,
    IntakeError,
    IntakeReason,
    VendorECG,
    VendorFormat,
    age_of,
    keep_known_leads,
)

_R = IntakeReason
DEFAULT_HUFFMAN = 19999  # section 2's table count meaning "the standard's default table"
_AGE_UNITS = {1: "years", 2: "months", 3: "weeks", 4: "days", 5: "hours"}
# The default Huffman table (EN 1064 annex), read most significant bit first: "0" is 0; k ones,
# a zero and a sign bit are +-k (k = 1..8); nine ones and a zero escape to an 8-bit value, ten
# ones to a 16-bit value (two's complement).


def looks_like_scp(data: bytes) -> bool:
    """A record CRC, the record length (little-endian) equal to the file size, then section 0."""
    return len(data) > 22 and int.from_bytes(data[2:6], "little") == len(data) and data[8:10] == b"\x00\x00"


def crc_ccitt(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


def read_scp(data: bytes) -> VendorECG:
    try:
        return _read(data)
    except (struct.error, IndexError) as exc:  # a field runs past the end of its section
        raise IntakeError(_R.CORRUPT_WAVEFORM, f"a section is shorter than its fields: {exc}") from None


def _read(data: bytes) -> VendorECG:
    sections = _sections(data)
    if 3 not in sections or 6 not in sections:
        raise IntakeError(_R.MISSING_ELEMENT, "SCP-ECG without section 3 (leads) or 6 (rhythm data)")
    leads, n, flags = _section3(sections[3])
    if flags & 0x01 or 4 in sections or 5 in sections:
        raise IntakeError(_R.UNSUPPORTED_ENCODING, "reference-beat subtraction (sections 4/5) is not supported")
    huffman = _section2(sections.get(2))
    uv_per_unit, fs, rows = _section6(sections[6], len(leads), n, huffman)
    signal = np.stack(rows) * uv_per_unit / 1000.0
    labels = [SCP_LEAD_NUMBERS.get(code, f"SCP lead {code}") for code in leads]
    names, signal, gain, warnings = keep_known_leads(labels, signal, np.full(len(labels), 1000.0 / uv_per_unit))
    tags = _section1(sections.get(1, b""))
    return VendorECG(
        format=VendorFormat.SCP, version=f"SCP-ECG {sections[0][8] / 10:.1f}" if len(sections[0]) > 8 else "SCP-ECG",
        fs=fs, leads=names, signal_mv=signal, gain_adc_per_mv=gain, acquired_at=_acquired(tags),
        patient_id=tags.get(2, b"").split(b"\x00")[0].decode("latin-1").strip() or None, age_years=_age(tags.get(4)),
        sex={1: Sex.MALE, 2: Sex.FEMALE}.get(tags.get(8, b"\x00")[:1][0] if tags.get(8) else 0), warnings=warnings,
    )


def _sections(data: bytes) -> dict[int, bytes]:
    """Section id -> the section's bytes (its 16-byte header included), all CRCs checked."""
    if len(data) < 22 or int.from_bytes(data[2:6], "little") != len(data):
        raise IntakeError(_R.CORRUPT_WAVEFORM, "record length field does not match the file size")
    if int.from_bytes(data[0:2], "little") != crc_ccitt(data[2:]):
        raise IntakeError(_R.CORRUPT_WAVEFORM, "record CRC mismatch")
    zero = _section_at(data, 6, 0)
    sections = {0: zero}
    for offset in range(16, len(zero) - 9, 10):
        sid, length, index = struct.unpack_from("<HII", zero, offset)
        if sid != 0 and length > 0:
            sections[sid] = _section_at(data, index - 1, sid)
    return sections


def _section_at(data: bytes, start: int, sid: int) -> bytes:
    if start < 6 or start + 16 > len(data):
        raise IntakeError(_R.CORRUPT_WAVEFORM, f"section {sid} lies outside the record")
    crc, found, length = struct.unpack_from("<HHI", data, start)
    body = data[start:start + length]
    if found != sid or length < 16 or len(body) != length:
        raise IntakeError(_R.CORRUPT_WAVEFORM, f"section {sid}: bad id or length")
    if crc != crc_ccitt(body[2:]):
        raise IntakeError(_R.CORRUPT_WAVEFORM, f"section {sid}: CRC mismatch")
    return body


def _section1(sec: bytes) -> dict[int, bytes]:
    tags: dict[int, bytes] = {}
    pos = 16
    while pos + 3 <= len(sec):
        tag, length = sec[pos], int.from_bytes(sec[pos + 1:pos + 3], "little")
        if tag == 255:
            break
        tags.setdefault(tag, sec[pos + 3:pos + 3 + length])
        pos += 3 + length
    return tags


def _section2(sec: bytes | None) -> bool:
    """True when the data are Huffman-coded with the default table; False when raw 16-bit."""
    if sec is None:
        return False
    count = int.from_bytes(sec[16:18], "little")
    if count != DEFAULT_HUFFMAN:
        raise IntakeError(_R.UNSUPPORTED_ENCODING, "custom Huffman tables (only the default table is supported)")
    return True


def _section3(sec: bytes) -> tuple[list[int], int, int]:
    n_leads, flags = sec[16], sec[17]
    leads, lengths = [], set()
    for i in range(n_leads):
        start, end, code = struct.unpack_from("<IIB", sec, 18 + 9 * i)
        leads.append(code)
        lengths.add(end - start + 1)
    if not leads or len(lengths) != 1 or min(lengths) < 1:
        raise IntakeError(_R.CORRUPT_WAVEFORM, "section 3: leads are absent or differ in sample count")
    return leads, lengths.pop(), flags


def _section6(sec: bytes, n_leads: int, n: int, huffman: bool) -> tuple[float, float, list[np.ndarray]]:
    avm_nv, interval_us, differences, bimodal = struct.unpack_from("<HHBB", sec, 16)
    if bimodal:
        raise IntakeError(_R.UNSUPPORTED_ENCODING, "bimodal compression is not supported")
    if avm_nv == 0 or interval_us == 0 or differences > 2:
        raise IntakeError(_R.INVALID_VALUE, f"section 6: multiplier {avm_nv} nV, interval {interval_us} us, "
                                            f"difference mode {differences}")
    sizes = struct.unpack_from(f"<{n_leads}H", sec, 22)
    pos, rows = 22 + 2 * n_leads, []
    for size in sizes:
        chunk = sec[pos:pos + size]
        pos += size
        values = _huffman(chunk, n) if huffman else _raw(chunk, n)
        rows.append(_undifference(values, differences))
    return avm_nv / 1000.0, 1e6 / interval_us, rows


def _raw(chunk: bytes, n: int) -> np.ndarray:
    if len(chunk) < 2 * n:
        raise IntakeError(_R.CORRUPT_WAVEFORM, f"section 6: {len(chunk)} bytes for {n} samples")
    return np.frombuffer(chunk[: 2 * n], "<i2").astype(np.int64)


def _huffman(chunk: bytes, n: int) -> np.ndarray:
    """Decode ``n`` values with the default table; bits are read most significant first."""
    bits = "".join(f"{b:08b}" for b in chunk)
    out: list[int] = []
    pos = 0
    while len(out) < n:
        k = bits.find("0", pos, pos + 10)
        ones = 10 if k < 0 else k - pos
        if ones == 0:
            out.append(0)
            pos += 1
            continue
        width = {9: 8, 10: 16}.get(ones, 1)  # the escapes carry a value; +-k carries a sign bit
        end = pos + ones + (ones < 10) + width
        if end > len(bits):
            raise IntakeError(_R.CORRUPT_WAVEFORM, f"section 6: Huffman data end after {len(out)} of {n} samples")
        field = int(bits[end - width:end], 2)
        if width == 1:
            out.append(-ones if field else ones)
        else:
            out.append(field - (1 << width) if field >= 1 << (width - 1) else field)
        pos = end
    return np.asarray(out, dtype=np.int64)


def _undifference(d: np.ndarray, mode: int) -> np.ndarray:
    if mode == 0:
        return d
    if mode == 1:
        return np.cumsum(d)
    if len(d) < 2:
        return d
    # d[0], d[1] are samples; d[i] = x[i] - 2 x[i-1] + x[i-2] after: first differences then samples
    first = np.cumsum(np.concatenate([[d[1] - d[0]], d[2:]]))
    return np.concatenate([[d[0]], d[0] + np.cumsum(first)])


def _acquired(tags: dict[int, bytes]) -> datetime | None:
    date, time = tags.get(25, b""), tags.get(26, b"")
    if len(date) < 4 or len(time) < 3:
        return None
    try:
        return datetime(int.from_bytes(date[0:2], "little"), date[2], date[3], time[0], time[1], time[2])
    except ValueError:
        return None


def _age(raw: bytes | None) -> float | None:
    if raw is None or len(raw) < 3:
        return None
    return age_of(str(int.from_bytes(raw[0:2], "little")), _AGE_UNITS.get(raw[2], "?"))
