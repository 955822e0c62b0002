"""The 12-lead ECG as a cardiologist reads it on paper, drawn as SVG on the server.

Standard layout: three rows of four 2.5 s columns (I, II, III | aVR, aVL, aVF |
V1-V3 | V4-V6), each column showing its own 2.5 s of the simultaneous recording,
then a 10 s lead II rhythm strip. One SVG unit is one millimetre of paper:
25 mm/s, 10 mm/mV, thin grid lines every 1 mm and thick every 5 mm, and a 1 mV,
200 ms calibration pulse at the start of each row. The SVG's intrinsic size is
in millimetres, so it prints at true scale.

What is drawn is the centre 10 s of the record (the model sees the same centre
crop, so the explanation's windows, in seconds from the start of the model
input, fall where they are shaded here when the model input is 10 s). Each lead
is shown about its median (a display baseline only; no filter touches the
samples). Masked leads are drawn in grey and labelled; a limb lead the record
lacks is derived from I and II (Einthoven/Goldberger) and marked with ``*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np

from schemas.messages import Window

MM_PER_S = 25.0
MM_PER_MV = 10.0
COLUMN_S = 2.5
RHYTHM_S = 10.0
LAYOUT: tuple[tuple[str, ...], ...] = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"),
                                       ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
LEFT_MM = 10.0  # room for the calibration pulse
ROW_MM = 30.0
BASELINE_MM = 18.0  # within a row: QRS complexes mostly point up
WIDTH_MM = LEFT_MM + RHYTHM_S * MM_PER_S + 5.0
HEIGHT_MM = 4 * ROW_MM + 8.0
_COL_MM = COLUMN_S * MM_PER_S

# Limb leads from I and II when a record lacks them (Einthoven's law, Goldberger's augmented leads).
_DERIVED = {"III": (-1.0, 1.0), "aVR": (-0.5, -0.5), "aVL": (1.0, -0.5), "aVF": (-0.5, 1.0)}


@dataclass(frozen=True, slots=True)
class Trace:
    samples: np.ndarray  # mV, the displayed 10 s (or less), about the lead's median
    derived: bool = False
    masked: bool = False


def display_traces(signal_mv: np.ndarray, fs: float, leads: Sequence[str],
                   masked: Sequence[str] = ()) -> dict[str, Trace]:
    """The centre ``RHYTHM_S`` seconds of each lead, centred on its median; derived limb leads added."""
    n = signal_mv.shape[1]
    keep = min(n, round(RHYTHM_S * fs))
    start = (n - keep) // 2
    seg = np.asarray(signal_mv[:, start:start + keep], dtype=np.float64)
    out = {lead: Trace(seg[i] - np.median(seg[i]), masked=lead in masked) for i, lead in enumerate(leads)}
    if "I" in out and "II" in out:
        for lead, (a, b) in _DERIVED.items():
            if lead not in out:
                x = a * out["I"].samples + b * out["II"].samples
                out[lead] = Trace(x - np.median(x), derived=True)
    return out


def render_ecg(signal_mv: np.ndarray, fs: float, leads: Sequence[str], *, masked: Sequence[str] = (),
               windows: Sequence[Window] = (), caption: str = "") -> str:
    """The printout as an SVG document (string); ``windows`` are shaded on their lead."""
    traces = display_traces(signal_mv, fs, leads, masked)
    parts = [_grid()]
    for r, row in enumerate(LAYOUT):
        parts.append(_calibration(r))
        for c, lead in enumerate(row):
            parts.append(_cell(traces.get(lead), lead, fs, r, c, windows))
    parts.append(_calibration(3))
    parts.append(_rhythm(traces.get(RHYTHM_LEAD), fs, windows))
    foot = " \u00b7 ".join(x for x in ("25 mm/s", "10 mm/mV", f"{fs:g} Hz", escape(caption)) if x)
    parts.append(f'<text class="ecg-foot" x="{LEFT_MM}" y="{HEIGHT_MM - 2.5}" font-size="3">{foot}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="ecg" role="img" aria-label="12-lead ECG" '
            f'width="{WIDTH_MM}mm" height="{HEIGHT_MM}mm" viewBox="0 0 {WIDTH_MM} {HEIGHT_MM}" '
            f'font-family="Helvetica, Arial, sans-serif">' + "".join(parts) + "</svg>")


def _grid() -> str:
    """Pink millimetre paper: thin lines each 1 mm, thick each 5 mm."""
    w, h = int(WIDTH_MM), int(HEIGHT_MM)
    thin = "".join(f"M{x} 0V{h}" for x in range(w + 1) if x % 5) + "".join(
        f"M0 {y}H{w}" for y in range(h + 1) if y % 5)
    thick = "".join(f"M{x} 0V{h}" for x in range(0, w + 1, 5)) + "".join(f"M0 {y}H{w}" for y in range(0, h + 1, 5))
    return (f'<rect width="{w}" height="{h}" fill="#fff7f7"/>'
            f'<path class="grid-minor" d="{thin}" stroke="#f4b6b6" stroke-width="0.1" fill="none"/>'
            f'<path class="grid-major" d="{thick}" stroke="#e07a7a" stroke-width="0.25" fill="none"/>')


def _baseline(row: int) -> float:
    return row * ROW_MM + BASELINE_MM


def _calibration(row: int) -> str:
    """1 mV (10 mm) high, 200 ms (5 mm) wide, standing on the row's baseline."""
    y = _baseline(row)
    top = y - 1.0 * MM_PER_MV
    return (f'<path class="calibration" d="M2 {y}H4V{top}H{4 + 0.2 * MM_PER_S}V{y}H{LEFT_MM}" '
            f'stroke="#111" stroke-width="0.3" fill="none"/>')


def _cell(trace: Trace | None, lead: str, fs: float, row: int, col: int, windows: Sequence[Window]) -> str:
    x0, t0 = LEFT_MM + col * _COL_MM, col * COLUMN_S
    y = _baseline(row)
    parts = [_shade(w, lead, t0, t0 + COLUMN_S, x0, row) for w in windows]
    if col:
        parts.append(f'<path class="separator" d="M{x0} {y - 4}V{y + 4}" stroke="#111" stroke-width="0.3"/>')
    if trace is not None:
        i0, i1 = round(t0 * fs), round((t0 + COLUMN_S) * fs)
        parts.append(_polyline(trace, i0, i1, fs, x0 - t0 * MM_PER_S, y))
    parts.append(_label(lead, trace, x0 + 1.5, row * ROW_MM + 5))
    return "".join(parts)


def _rhythm(trace: Trace | None, fs: float, windows: Sequence[Window]) -> str:
    y = _baseline(3)
    parts = [_shade(w, RHYTHM_LEAD, 0.0, RHYTHM_S, LEFT_MM, 3) for w in windows]
    # A window on another lead may fall outside that lead's 2.5 s column: mark its time under the strip.
    parts += [_time_mark(w, k) for k, w in enumerate(x for x in windows if x.lead != RHYTHM_LEAD)]
    if trace is not None:
        parts.append(_polyline(trace, 0, len(trace.samples), fs, LEFT_MM, y))
    parts.append(_label(RHYTHM_LEAD, trace, LEFT_MM + 1.5, 3 * ROW_MM + 5, rhythm=True))
    return "".join(parts)


def _polyline(trace: Trace, i0: int, i1: int, fs: float, x_origin: float, y: float) -> str:
    """Samples i0..i1 (one more, to join the next column) at 25 mm/s and 10 mm/mV."""
    idx = np.arange(i0, min(i1 + 1, len(trace.samples)))
    if idx.size < 2:
        return ""
    xs = x_origin + idx / fs * MM_PER_S
    ys = y - trace.samples[idx] * MM_PER_MV
    pts = " ".join(f"{a:.2f},{b:.2f}" for a, b in zip(xs, ys, strict=True))
    colour = "#9a9a9a" if trace.masked else "#111"
    return f'<polyline class="trace" points="{pts}" stroke="{colour}" stroke-width="0.28" fill="none"/>'


def _label(lead: str, trace: Trace | None, x: float, y: float, rhythm: bool = False) -> str:
    note = ""
    if trace is None:
        note = " not recorded"
    elif trace.masked:
        note = " masked"
    elif trace.derived:
        note = "*"
    cls = "lead-label rhythm" if rhythm else "lead-label"
    return (f'<text class="{cls}" data-lead="{escape(lead)}" x="{x}" y="{y}" font-size="3.5" '
            f'font-weight="bold" fill="#111">{escape(lead)}{note}</text>')


def _time_mark(w: Window, k: int) -> str:
    x0, x1 = LEFT_MM + w.start_s * MM_PER_S, LEFT_MM + min(w.end_s, RHYTHM_S) * MM_PER_S
    y = 4 * ROW_MM - 2.5 - 3.0 * (k % 3)  # stacked, so marks at the same time stay readable
    return (f'<g class="window-mark" data-lead="{escape(w.lead)}"><rect x="{x0:.2f}" y="{y}" '
            f'width="{max(0.0, x1 - x0):.2f}" height="1.2" fill="#2f6fde"/><text x="{x0:.2f}" y="{y - 0.6}" '
            f'font-size="2.4" fill="#2f6fde">{escape(w.lead)}</text></g>')


def _shade(w: Window, lead: str, t0: float, t1: float, x0: float, row: int) -> str:
    """An attributed window on its lead, clipped to the part of it this cell shows."""
    a, b = max(w.start_s, t0), min(w.end_s, t1)
    if w.lead != lead or b <= a:
        return ""
    x = x0 + (a - t0) * MM_PER_S
    opacity = 0.15 + 0.35 * max(0.0, min(1.0, w.weight))
    return (f'<rect class="attribution" data-lead="{escape(lead)}" x="{x:.2f}" y="{row * ROW_MM + 1}" '
            f'width="{(b - a) * MM_PER_S:.2f}" height="{ROW_MM - 2}" fill="#2f6fde" fill-opacity="{opacity:.2f}"/>')
