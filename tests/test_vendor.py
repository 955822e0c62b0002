"""Vendor adapters: round trips against independent decodes, refusals with reasons, privacy, safe XML."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas.codec import decode_event
from schemas.vendor import (
    FormatChoice,
    IntakeContext,
    IntakeError,
    IntakeReason,
    convert_file,
    decode_bytes,
    patient_ref,
    windows,
)

pydicom = pytest.importorskip("pydicom")
CTX = IntakeContext(site="site-a", secret=b"s" * 32)
DICOM_SAMPLE = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))
REPO = Path(__file__).resolve().parents[1]


def vendor(shared: Path, name: str) -> Path:
    return shared / "vendor" / name


def event_of(path: Path, choice: FormatChoice = FormatChoice.AUTO) -> tuple[dict, np.ndarray]:  # type: ignore[type-arg]
    """The single event of a file as its JSON document and its int16 samples (L, N), read directly."""
    conversion = convert_file(path, CTX, choice)
    assert len(conversion.events) == 1
    doc = orjson.loads(conversion.events[0].payload)
    adc = np.frombuffer(base64.b64decode(doc["data"]), "<i2").reshape(len(doc["leads"]), doc["n_samples"])
    decode_event(conversion.events[0].payload)  # and the worker's own decoder accepts it
    return doc, adc.astype(np.int64)


def lead_mv(doc: dict, adc: np.ndarray, lead: str) -> np.ndarray:  # type: ignore[type-arg]
    i = doc["leads"].index(lead)
    return adc[i] / doc["encoding"]["gain_adc_per_mv"][i]


# --------------------------------------------------------------------------- per format, shared samples


def test_muse_rhythm_lead_ii_matches_a_direct_base64_read_and_limb_leads_obey_einthoven(shared_data: Path) -> None:
    path = vendor(shared_data, "muse/musephi-muse_ecg1.xml")
    doc, adc = event_of(path)
    text = path.read_text(encoding="latin-1")
    rhythm = text[text.index("<WaveformType>Rhythm</WaveformType>"):]
    block = re.search(r"<LeadID>II</LeadID>.*?<WaveFormData>([^<]*)</WaveFormData>", rhythm, re.S)
    assert block is not None
    direct = np.frombuffer(base64.b64decode(block.group(1)), "<i2") * 4.88 / 1000.0
    assert doc["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert doc["sampling_rate_hz"] == 500 and doc["n_samples"] == 5000
    np.testing.assert_allclose(lead_mv(doc, adc, "II"), direct, atol=1e-9)
    i, ii, iii, avr, avl, avf = (adc[doc["leads"].index(n)] for n in ("I", "II", "III", "aVR", "aVL", "aVF"))
    assert np.array_equal(iii, ii - i)  # exact, in the event's own int16 samples
    assert np.array_equal(2 * avr, -(i + ii)) and np.array_equal(2 * avl, 2 * i - ii)
    assert np.array_equal(2 * avf, 2 * ii - i)
    assert doc["age_years"] == 60 and doc["sex"] == "M" and doc["acquired_at"] == "2021-05-10T13:15:18.000Z"


def test_philips_xli_lead_ii_matches_the_sierraecg_reader(shared_data: Path) -> None:
    sierraecg = pytest.importorskip("sierraecg")
    for name, version in (("pagewriter-tc-2020-5-18_15-48-11.xml", "1.04.01"),
                          ("heartstart-mrx-simulator-1_03-129DYPRG.XML", "1.03")):
        path = vendor(shared_data, f"philips/{name}")
        assert convert_file(path, CTX).version == version
        doc, adc = event_of(path)
        ref = {lead.label: lead.samples for lead in sierraecg.read_file(str(path)).leads}
        assert doc["sampling_rate_hz"] == 500 and doc["n_samples"] == 5000  # 11 s stored: one 10 s window
        for lead in ("I", "II", "V1", "V6"):
            np.testing.assert_allclose(lead_mv(doc, adc, lead), ref[lead][:5000] * 5 / 1000.0, atol=1e-9)


def test_philips_refuses_a_document_that_is_not_sierraecg(shared_data: Path) -> None:
    path = vendor(shared_data, "philips/not-sierraecg-converted-root.xml")
    with pytest.raises(IntakeError) as err:
        convert_file(path, CTX, FormatChoice.PHILIPS)
    assert err.value.reason is IntakeReason.WRONG_DOCUMENT and "AnnotatedECG" in err.value.detail


def test_aecg_lead_ii_matches_the_digits_times_scale(shared_data: Path) -> None:
    path = vendor(shared_data, "aecg/cvrg-hl7aecg-Example2.xml")
    doc, adc = event_of(path)
    text = path.read_text(encoding="utf-8")
    block = re.search(r'code="MDC_ECG_LEAD_II".*?<scale value="([\d.]+)".*?<digits>([^<]*)</digits>', text, re.S)
    assert block is not None
    direct = np.array(block.group(2).split(), dtype=np.int64) * float(block.group(1)) / 1000.0
    assert doc["sampling_rate_hz"] == 1000 and doc["n_samples"] == 10000 and len(doc["leads"]) == 12
    np.testing.assert_allclose(lead_mv(doc, adc, "II"), direct, atol=1e-9)
    assert doc["acquired_at"] == "2004-01-15T11:20:04.000Z"


def test_dicom_lead_ii_matches_the_raw_waveform_bytes() -> None:
    doc, adc = event_of(DICOM_SAMPLE)
    group = pydicom.dcmread(DICOM_SAMPLE).WaveformSequence[0]
    raw = np.frombuffer(group.WaveformData, "<i2").reshape(-1, group.NumberOfWaveformChannels)
    channel = 1  # the sample's second channel is SCPECG 5.6.3-9-2, lead II
    assert group.ChannelDefinitionSequence[channel].ChannelSourceSequence[0].CodeValue == "5.6.3-9-2"
    sensitivity = float(group.ChannelDefinitionSequence[channel].ChannelSensitivity)
    np.testing.assert_allclose(lead_mv(doc, adc, "II"), raw[:, channel] * sensitivity / 1000.0, atol=1e-9)
    assert doc["leads"][:6] == ["I", "II", "III", "aVR", "aVL", "aVF"] and doc["n_samples"] == 10000
    assert doc["sex"] == "F" and doc["age_years"] == 42


def test_dicom_that_is_not_an_ecg_is_refused() -> None:
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    with pytest.raises(IntakeError) as err:
        convert_file(ct, CTX)
    assert err.value.reason is IntakeReason.WRONG_DOCUMENT


# --------------------------------------------------------------------------- privacy at the edge


def test_patient_identifiers_and_names_never_reach_an_event(shared_data: Path) -> None:
    path = vendor(shared_data, "muse/musephi-muse_ecg1.xml")
    payload = convert_file(path, CTX).events[0].payload
    assert b"JAX01234" not in payload and b"TEST 05" not in payload and b"Research" not in payload
    doc = orjson.loads(payload)
    assert doc["patient_ref"] == patient_ref("JAX01234", "site-a", b"s" * 32)
    assert doc["patient_ref"] != patient_ref("JAX01234", "site-b", b"s" * 32)
    assert doc["patient_ref"] != patient_ref("JAX01234", "site-a", b"t" * 32)
    statements = convert_file(path, CTX).events[0].statements
    assert "Left axis deviation" in statements
    assert not any("Confirmed by" in s or "Doe" in s for s in statements)


def test_dicom_patient_id_is_keyed_and_the_name_dropped() -> None:
    payload = convert_file(DICOM_SAMPLE, CTX).events[0].payload
    assert b"642341" not in payload and b"Anonymous" not in payload
    assert orjson.loads(payload)["patient_ref"] == patient_ref("642341", "site-a", b"s" * 32)


# --------------------------------------------------------------------------- safe XML and sniffing


@pytest.mark.parametrize("xml", [
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
    b"<RestingECG>&b;</RestingECG>",
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><RestingECG>&x;</RestingECG>',
])
def test_entities_are_refused_before_expansion(xml: bytes) -> None:
    with pytest.raises(IntakeError) as err:
        decode_bytes(xml)
    assert err.value.reason is IntakeReason.UNSAFE_XML


def test_unknown_and_oversize_files_are_refused_with_reasons(tmp_path: Path) -> None:
    with pytest.raises(IntakeError) as err:
        decode_bytes(b'<?xml version="1.0"?><invoice/>')
    assert err.value.reason is IntakeReason.UNKNOWN_FORMAT and "invoice" in err.value.detail
    with pytest.raises(IntakeError) as err:
        decode_bytes(b"<RestingECG>" + b" " * (33 * 1024 * 1024) + b"</RestingECG>", FormatChoice.MUSE)
    assert err.value.reason is IntakeReason.FILE_TOO_LARGE
    with pytest.raises(IntakeError) as err:
        decode_bytes(b"<RestingECG><MuseInfo/></RestingECG>")
    assert err.value.reason is IntakeReason.MISSING_ELEMENT


# --------------------------------------------------------------------------- WFDB hardening


def write_wfdb(folder: Path, names: list[str], seconds: float = 25.0, first_line_extra: str = "") -> Path:
    fs, n = 250, int(seconds * 250)
    rng = np.random.default_rng(0)
    adc = (rng.normal(0, 100, size=(n, len(names)))).astype("<i2")
    (folder / "r.dat").write_bytes(adc.tobytes())
    lines = [f"r {len(names)} {fs} {n}{first_line_extra}"] + [f"r.dat 16 200/mV 16 0 {adc[0, i]} 0 0 {name}"
                                                               for i, name in enumerate(names)]
    (folder / "r.hea").write_text("\n".join(lines) + "\n")
    return folder / "r.hea"


def test_wfdb_aliases_windows_and_dropped_leads(tmp_path: Path) -> None:
    path = write_wfdb(tmp_path, ["MLII", "V5", "ABP"], first_line_extra=" 10:00:00 01/02/2020")
    conversion = convert_file(path, CTX)
    events = [decode_event(e.payload) for e in conversion.events]
    assert [e.leads for e in events] == [("II", "V5")] * 2  # 25 s: two whole 10 s windows
    assert [e.n_samples for e in events] == [2500, 2500]
    assert (events[1].acquired_at - events[0].acquired_at).total_seconds() == 10.0
    assert any("ABP" in w for w in conversion.warnings)
    assert windows(2000, 250.0, 10.0) == [(0, 2000)]


def test_wfdb_without_a_known_lead_or_with_a_bad_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IntakeError) as err:
        convert_file(write_wfdb(tmp_path, ["ABP", "PLETH"]), CTX)
    assert err.value.reason is IntakeReason.NO_KNOWN_LEADS
    with pytest.raises(IntakeError) as err:  # the date written before the time
        convert_file(write_wfdb(tmp_path, ["II"], first_line_extra=" 01/02/2020 10:00:00"), CTX)
    assert err.value.reason is IntakeReason.INVALID_HEADER


# --------------------------------------------------------------------------- the command


def run_convert(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"ECGSCREEN_INTAKE_SECRETS": '{"default": "0123456789abcdef"}', "PYTHONPATH": str(REPO),
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "ops.cli", "events", "convert", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def test_convert_command_prints_events_and_one_error_line_per_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<RestingECG><unclosed></RestingECG>")
    manifest = tmp_path / "reports.jsonl"
    out = run_convert(str(bad), str(DICOM_SAMPLE), "--keep-going", "--report-manifest", str(manifest))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith(f"ecgscreen: malformed_xml: {bad}: mismatched tag: line 1")
    event = decode_event(out.stdout.splitlines()[0].encode())
    assert event.event_id.startswith("dicom-") and event.sampling_rate_hz == 1000.0
    assert orjson.loads(manifest.read_bytes())["statements"] == ["RITMO SINUSALE", "ECG NORMALE"]
    stopped = run_convert(str(bad), str(DICOM_SAMPLE))  # without --keep-going the first failure ends it
    assert stopped.returncode == 1 and stopped.stdout == ""


# --------------------------------------------------------------------------- gate and model


def test_every_converted_sample_passes_the_gate_and_is_scored_by_the_default_bundle(shared_data: Path) -> None:
    from models.bundle import load_bundle
    from models.engine import make_engine
    from schemas.messages import QualityStatus
    from workers.pipeline import RawMessage, Screener

    files = [DICOM_SAMPLE, *sorted((shared_data / "vendor").glob("*/*.[xX][mM][lL]"))]
    payloads = [e.payload for f in files for e in convert_file(f, CTX).events]
    assert len(payloads) == 6  # MUSE, 2 Philips, 2 aECG (one of them Philips-made), DICOM
    bundle = load_bundle(REPO / "models/bundles/ecgclip-r18-ptbxl-100hz")
    screener = Screener(bundle=bundle, engine=make_engine(bundle, "torch-cpu"), explain_alerts=False)
    outcomes = screener.screen([RawMessage.of(p, "ecg.events", 0, i) for i, p in enumerate(payloads)])
    for outcome in outcomes:
        assert outcome.verdict is not None, outcome.deadletter
        assert outcome.verdict.quality.status in (QualityStatus.PASS, QualityStatus.DEGRADED)
        wrong_leads = {"limb_lead_inconsistent", "limb_lead_reversal", "precordial_lead_swap", "missing_limb_leads"}
        assert not wrong_leads & set(outcome.verdict.quality.reasons)
        assert set(outcome.verdict.scores) == set(bundle.task_ids)


def test_intake_settings_need_a_secret_per_site() -> None:
    from schemas.errors import ConfigError
    from workers.settings import load_settings

    settings = load_settings({"ECGSCREEN_INTAKE_SECRETS": '{"site-a": "0123456789abcdef"}',
                              "ECGSCREEN_INTAKE_DONE": "delete"})
    assert settings.intake.secrets == {"site-a": b"0123456789abcdef"} and settings.intake.done == "delete"
    assert "0123456789abcdef" not in repr(settings)
    with pytest.raises(ConfigError):
        load_settings({"ECGSCREEN_INTAKE_SECRETS": '{"site-a": "short"}'})
    from ops.events_cmd import intake_context

    with pytest.raises(ConfigError, match="no patient_ref secret for site 'site-b'"):
        intake_context(settings, "site-b")
