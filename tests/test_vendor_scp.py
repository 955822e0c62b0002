"""SCP-ECG: no shareable sample exists, so records are written here from the standard (EN 1064)
around a real ECG (pydicom's 12-lead sample) and read back by the adapter."""

from __future__ import annotations

import binascii
import struct
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas.codec import decode_event
from schemas.vendor import FormatChoice, IntakeContext, IntakeError, IntakeReason, convert_file, patient_ref

pydicom = pytest.importorskip("pydicom")
CTX = IntakeContext(site="site-a", secret=b"s" * 32)
SCP_LEADS = {"I": 1, "II": 2, "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8,
             "III": 61, "aVR": 62, "aVL": 63, "aVF": 64}


def real_ecg() -> tuple[list[int], np.ndarray]:
    """SCP lead codes and int16 samples (L, N) at 1.25 uV, 1 kHz of pydicom's real 12-lead ECG."""
    group = pydicom.dcmread(pydicom.data.get_testdata_file("waveform_ecg.dcm")).WaveformSequence[0]
    raw = np.frombuffer(group.WaveformData, "<i2").reshape(-1, group.NumberOfWaveformChannels).T
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    return [SCP_LEADS[n] for n in names], raw.astype(np.int64)


def huffman_default(values: np.ndarray) -> bytes:
    bits = []
    for v in values.tolist():
        if v == 0:
            bits.append("0")
        elif abs(v) <= 8:
            bits.append("1" * abs(v) + "0" + ("1" if v < 0 else "0"))
        elif -128 <= v <= 127:
            bits.append("1111111110" + format(v & 0xFF, "08b"))
        else:
            bits.append("1111111111" + format(v & 0xFFFF, "016b"))
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big") if text else b""


def second_differences(x: np.ndarray) -> np.ndarray:
    d = x.copy()
    d[2:] = x[2:] - 2 * x[1:-1] + x[:-2]
    return d


def section(sid: int, body: bytes) -> bytes:
    reserved = b"SCPECG" if sid == 0 else b"\x00" * 6
    rest = struct.pack("<HIBB", sid, 16 + len(body), 20, 20) + reserved + body
    return struct.pack("<H", binascii.crc_hqx(rest, 0xFFFF)) + rest


def tag(number: int, value: bytes) -> bytes:
    return struct.pack("<BH", number, len(value)) + value


def scp_record(leads: list[int], x: np.ndarray, flags: int = 0x04, huffman: bool = True) -> bytes:
    n = x.shape[1]
    header = (tag(0, b"DOE\x00") + tag(2, b"SCP-PAT-1\x00") + tag(4, struct.pack("<HB", 42, 1))
              + tag(8, b"\x02") + tag(25, struct.pack("<HBB", 2013, 1, 25)) + tag(26, bytes([10, 59, 19]))
              + tag(255, b""))
    lead_def = bytes([len(leads), flags | (len(leads) << 3)]) + b"".join(
        struct.pack("<IIB", 1, n, code) for code in leads)
    coded = [huffman_default(second_differences(row)) if huffman else second_differences(row).astype("<i2").tobytes()
             for row in x]
    rhythm = struct.pack("<HHBB", 1250, 1000, 2, 0) + struct.pack(f"<{len(coded)}H", *map(len, coded)) + b"".join(coded)
    parts = {1: section(1, header), 3: section(3, lead_def), 6: section(6, rhythm)}
    if huffman:
        parts[2] = section(2, struct.pack("<H", 19999))
    pointer_size = 16 + 12 * 10
    index, pointers, body = 7 + pointer_size, b"", b""
    for sid in range(12):
        part = parts.get(sid, b"")
        pointers += struct.pack("<HII", sid, len(part), index if part else 0)
        body += part
        index += len(part)
    content = section(0, pointers[:0] + struct.pack("<HII", 0, pointer_size, 7) + pointers[10:]) + body
    size = 6 + len(content)
    rest = struct.pack("<I", size) + content
    return struct.pack("<H", binascii.crc_hqx(rest, 0xFFFF)) + rest


def test_scp_huffman_second_differences_round_trip_a_real_ecg(tmp_path: Path) -> None:
    leads, x = real_ecg()
    path = tmp_path / "ecg.scp"
    path.write_bytes(scp_record(leads, x))
    conversion = convert_file(path, CTX)  # sniffed, not told
    assert conversion.format.value == "scp" and len(conversion.events) == 1
    event = decode_event(conversion.events[0].payload)
    assert event.sampling_rate_hz == 1000.0 and event.leads[:3] == ("I", "II", "III") and event.n_samples == 10000
    np.testing.assert_allclose(event.signal_mv[1], x[1] * 1.25e-3, atol=1e-6)
    np.testing.assert_allclose(event.signal_mv[8], x[8] * 1.25e-3, atol=1e-6)
    doc = orjson.loads(conversion.events[0].payload)
    assert doc["patient_ref"] == patient_ref("SCP-PAT-1", "site-a", b"s" * 32)
    assert doc["acquired_at"] == "2013-01-25T10:59:19.000Z" and doc["sex"] == "F" and doc["age_years"] == 42
    assert b"DOE" not in conversion.events[0].payload and b"SCP-PAT" not in conversion.events[0].payload


def test_scp_without_huffman_reads_raw_differences(tmp_path: Path) -> None:
    leads, x = real_ecg()
    path = tmp_path / "raw.scp"
    path.write_bytes(scp_record(leads, x[:, :3000], huffman=False))
    event = decode_event(convert_file(path, CTX, FormatChoice.SCP).events[0].payload)
    np.testing.assert_allclose(event.signal_mv[0], x[0, :3000] * 1.25e-3, atol=1e-6)


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), IntakeReason.CORRUPT_WAVEFORM),  # a flipped byte: CRC
    (lambda b: b[:100], IntakeReason.UNKNOWN_FORMAT),  # truncated: the length no longer matches
])
def test_damaged_scp_is_refused(tmp_path: Path, mutate, reason: IntakeReason) -> None:  # type: ignore[no-untyped-def]
    leads, x = real_ecg()
    path = tmp_path / "bad.scp"
    path.write_bytes(mutate(scp_record(leads, x[:, :2000])))
    with pytest.raises(IntakeError) as err:
        convert_file(path, CTX)
    assert err.value.reason is reason


def test_scp_with_reference_beat_subtraction_is_refused(tmp_path: Path) -> None:
    leads, x = real_ecg()
    path = tmp_path / "ref.scp"
    path.write_bytes(scp_record(leads, x[:, :2000], flags=0x05))
    with pytest.raises(IntakeError) as err:
        convert_file(path, CTX, FormatChoice.SCP)
    assert err.value.reason is IntakeReason.UNSUPPORTED_ENCODING


def test_scp_sections_shorter_than_their_fields_are_refused_not_crashed(tmp_path: Path) -> None:
    leads, x = real_ecg()
    record = bytearray(scp_record(leads, x[:, :500]))
    # claim 40 leads in section 3 (its CRCs made valid again): the lead table runs past the section
    zero = record[6:6 + 136]
    start = next(struct.unpack_from("<HII", zero, 16 + 10 * k)[2] - 1 for k in range(12)
                 if struct.unpack_from("<HII", zero, 16 + 10 * k)[0] == 3)
    length = struct.unpack_from("<I", record, start + 4)[0]
    record[start + 16] = 40
    record[start:start + 2] = struct.pack("<H", binascii.crc_hqx(bytes(record[start + 2:start + length]), 0xFFFF))
    record[0:2] = struct.pack("<H", binascii.crc_hqx(bytes(record[2:]), 0xFFFF))
    path = tmp_path / "short.scp"
    path.write_bytes(bytes(record))
    with pytest.raises(IntakeError) as err:
        convert_file(path, CTX)
    assert err.value.reason is IntakeReason.CORRUPT_WAVEFORM
