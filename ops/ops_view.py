"""What a person sees of a running worker's ops endpoints (the demo prints it)."""

from __future__ import annotations

import urllib.error
import urllib.request

# Series the demo shows; histograms as their counts and sums only.
SHOWN = ("ecgscreen_events_total", "ecgscreen_deadletters_total", "ecgscreen_gate_records_total",
         "ecgscreen_alerts_total", "ecgscreen_consumer_lag", "ecgscreen_model_info", "ecgscreen_ready",
         "ecgscreen_dependency_up", "ecgscreen_batch_size_count", "ecgscreen_stage_seconds_sum",
         "ecgscreen_event_to_verdict_seconds_count", "ecgscreen_event_to_verdict_seconds_sum")


def fetch(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """(HTTP status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        return 0, str(err)


def ops_view(base_url: str) -> dict[str, object]:
    """/healthz and /readyz as they answer, and the shown series of /metrics."""
    out: dict[str, object] = {"ops_url": base_url}
    for path in ("healthz", "readyz"):
        status, body = fetch(f"{base_url}/{path}")
        out[path] = f"HTTP {status} {body.strip()}"
    status, text = fetch(f"{base_url}/metrics")
    out["metrics"] = [ln for ln in text.splitlines() if ln.startswith(SHOWN)] if status == 200 else [text]
    return out
