"""The ECG drawing: paper scale, layout, calibration, labels and shading, as pure functions."""

from __future__ import annotations

import re

import numpy as np

from ops.web import ecg_svg
from ops.web.views import lost_lease_ms
from schemas.messages import Window
from workers.triage_audit import AuditEntry

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _points(svg: str) -> list[np.ndarray]:
    return [np.array([[float(v) for v in p.split(",")] for p in m.split()])
            for m in re.findall(r'class="trace" points="([^"]+)"', svg)]


def test_grid_is_one_and_five_millimetres() -> None:
    svg = ecg_svg.render_ecg(np.zeros((12, 5000)), 500.0, LEADS)
    minor = re.search(r'class="grid-minor" d="([^"]+)"', svg)
    major = re.search(r'class="grid-major" d="([^"]+)"', svg)
    assert minor and major
    xs_minor = sorted({int(x) for x in re.findall(r"M(\d+) 0V", minor.group(1))})
    xs_major = sorted({int(x) for x in re.findall(r"M(\d+) 0V", major.group(1))})
    assert np.all(np.diff(xs_major) == 5) and set(np.diff(xs_minor)) <= {1, 2}
    assert set(xs_minor) | set(xs_major) == set(range(0, int(ecg_svg.WIDTH_MM) + 1))
    assert 'viewBox="0 0 265.0 128.0"' in svg and 'width="265.0mm"' in svg  # 1 unit = 1 mm of paper


def test_layout_speed_gain_and_columns() -> None:
    """A 1 mV square pulse at t = 1.0-1.2 s on every lead: 10 mm high, 5 mm wide, where 25 mm/s puts it."""
    fs = 500.0
    x = np.zeros((12, 5000))
    x[:, 500:600] = 1.0
    svg = ecg_svg.render_ecg(x, fs, LEADS)
    traces = _points(svg)
    assert len(traces) == 13  # 12 cells of 2.5 s and the 10 s rhythm strip
    first = traces[0]  # lead I, column 0
    assert first[0, 0] == ecg_svg.LEFT_MM and first[-1, 0] == ecg_svg.LEFT_MM + 62.5  # 2.5 s = 62.5 mm
    base = first[0, 1]
    high = first[np.isclose(first[:, 1], base - 10.0)]
    assert high[0, 0] == ecg_svg.LEFT_MM + 25.0 and high[-1, 0] == ecg_svg.LEFT_MM + 25.0 + 4.95
    # Column 2 of row 0 is V1, showing seconds 5.0-7.5 of the same recording.
    v1 = traces[6]
    assert v1[0, 0] == ecg_svg.LEFT_MM + 125.0
    rhythm = traces[-1]
    assert rhythm[-1, 0] == ecg_svg.LEFT_MM + 250.0 - 0.05


def test_calibration_pulse_is_one_millivolt_two_hundred_ms() -> None:
    svg = ecg_svg.render_ecg(np.zeros((12, 1000)), 100.0, LEADS)
    pulses = re.findall(r'class="calibration" d="M2 ([\d.]+)H4V([\d.]+)H([\d.]+)V', svg)
    assert len(pulses) == 4  # one per row, rhythm strip included
    for base, top, right in pulses:
        assert float(base) - float(top) == 10.0 and float(right) - 4 == 5.0


def test_labels_masked_derived_and_shading() -> None:
    eight = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    svg = ecg_svg.render_ecg(np.random.default_rng(0).normal(0, 0.1, (8, 1000)), 100.0, eight,
                             masked=("V2",), windows=(Window("V2", 5.5, 6.5, 0.5), Window("V5", 1.0, 2.0, 0.2)))
    labels = dict(re.findall(r'data-lead="([^"]+)"[^>]*>([^<]+)</text>', svg))
    assert set(labels) == set(LEADS)
    assert labels["III"] == "III*" and labels["aVR"] == "aVR*"  # derived from I and II
    assert labels["V2"] == "V2 masked"
    shaded = re.findall(r'class="attribution" data-lead="(\w+)" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)
    assert shaded == [("V2", f"{ecg_svg.LEFT_MM + 125 + 12.5:.2f}", "25.00")]  # in V2's 5.0-7.5 s column
    assert 'class="window-mark" data-lead="V5"' in svg  # outside V5's column: marked under the strip


def test_long_record_shows_its_centre_ten_seconds() -> None:
    x = np.zeros((12, 2000))
    x[:, 500:1500] = np.arange(1000) / 1000.0
    traces = ecg_svg.display_traces(x, 100.0, LEADS)
    shown = traces["II"].samples
    assert len(shown) == 1000 and np.allclose(np.diff(shown), 0.001)  # exactly the ramp at 5-15 s


def _e(action: str, actor: str, at: int, detail: str = "{}") -> AuditEntry:
    return AuditEntry("0-0", "s", action, "al_1", actor, at, detail, "", "")


def test_lost_lease_is_recognised() -> None:
    assert lost_lease_ms([_e("claimed", "me", 1), _e("lease_expired", "system", 5)], "me") == 5
    assert lost_lease_ms([_e("claimed", "me", 1), _e("reassigned", "boss", 7, '{"to":"you"}')], "me") == 7
    assert lost_lease_ms([_e("claimed", "me", 1), _e("lease_expired", "system", 5), _e("claimed", "me", 9)],
                         "me") is None
    assert lost_lease_ms([_e("claimed", "you", 1), _e("lease_expired", "system", 5)], "me") is None
