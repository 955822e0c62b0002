"""The `ecgscreen` command as people and scripts use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from ops.cli import main
from ops.feed import malformed_payloads, simulated_records
from schemas.codec import decode_event


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_events_validate_reports_each_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = next(simulated_records(1, fs=250.0, seed=2, bases=1)).encode()
    bad = malformed_payloads(good)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([good, bad[1][1], bad[3][1]]) + b"\n")
    assert main(["events", "validate", str(path)]) == 1
    lines = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == [{"line": 1, "ok": True, "reason": None},
                     {"line": 2, "ok": False, "reason": bad[1][0].value},
                     {"line": 3, "ok": False, "reason": bad[3][0].value}]


def test_events_from_npz_writes_valid_events(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npz, csv = shared_data / "ptbxl_folds1-8_500hz.npz", shared_data / "ptbxl_folds1-8_metadata.csv"
    assert main(["events", "from-npz", str(npz), str(csv), "--limit", "3"]) == 0
    events = [decode_event(line.encode()) for line in capsys.readouterr().out.splitlines()]
    assert [e.event_id for e in events] == ["ptbxl-1-500hz", "ptbxl-2-500hz", "ptbxl-3-500hz"]
    assert all(e.signal_mv.shape == (12, 5000) and e.sampling_rate_hz == 500.0 for e in events)
    assert events[0].sex is not None and events[0].age_years is not None


def test_events_from_wfdb_reads_ptbxl_and_other_formats(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wfdb = shared_data / "wfdb"
    paths = [wfdb / "ptbxl/records500/00001_hr", wfdb / "cinc2021/HR06002.hea",
             wfdb / "ptb_diagnostic/s0010_re"]
    assert main(["events", "from-wfdb", *map(str, paths)]) == 0
    events = [decode_event(line.encode()) for line in capsys.readouterr().out.splitlines()]
    # the 38.4 s PTB record becomes three 10 s windows (the 8.4 s tail is dropped)
    assert [e.signal_mv.shape for e in events] == [(12, 5000), (12, 5000), (15, 10000), (15, 10000), (15, 10000)]
    assert events[2].leads[:3] == ("I", "II", "III") and events[2].leads[-3:] == ("X", "Y", "Z")
    assert [e.event_id for e in events[2:]] == [f"wfdb-s0010_re-w{k}" for k in range(3)]


def test_stack_up_status_down(tmp_path: Path) -> None:
    env = {"ECGSCREEN_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    up = run_cli("stack", "up", "--partitions", "2", env=env)
    assert up.returncode == 0, up.stderr
    info = orjson.loads(up.stdout)
    assert info["partitions"] == 2 and "ecg.events" in info["topics"]
    try:
        status = run_cli("stack", "status", env=env)
        assert status.returncode == 0 and orjson.loads(status.stdout)["running"] is True
    finally:
        assert run_cli("stack", "down", env=env).returncode == 0
    after = run_cli("stack", "status", env=env)
    assert after.returncode == 3 and orjson.loads(after.stdout)["running"] is False


def test_bad_setting_is_reported_not_raised(tmp_path: Path) -> None:
    out = run_cli("stack", "status", env={"ECGSCREEN_MAX_BATCH": "lots", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1 and "ECGSCREEN_MAX_BATCH='lots' is not an integer" in out.stderr
