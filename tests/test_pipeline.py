"""The batch pipeline as a plain function: raw payloads in, one outcome each out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from models.bundle import Bundle, init_untrained_bundle, load_bundle, save_bundle
from models.engine import make_engine
from ops.feed import SignalFault, malformed_payloads, simulated_records, with_fault
from schemas.codec import encode_deadletter
from schemas.messages import DeadLetterReason, QualityStatus
from workers.pipeline import RawMessage, Screener, classify


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return init_untrained_bundle(tmp_path_factory.mktemp("b") / "bundle", base_width=8)


@pytest.fixture(scope="module")
def screener(bundle: Bundle) -> Screener:
    return Screener(bundle=bundle, engine=make_engine(bundle, "torch-cpu"))


@pytest.fixture(scope="module")
def records():  # type: ignore[no-untyped-def]
    return list(simulated_records(6, fs=500.0, seed=1, bases=2))


def msg(payload: bytes, offset: int = 0) -> RawMessage:
    return RawMessage.of(payload, "ecg.events", 0, offset, 1_700_000_000_000)


def test_clean_records_get_verdicts_with_a_score_per_task(screener: Screener, records) -> None:  # type: ignore[no-untyped-def]
    outcomes = screener.screen([msg(r.encode(), i) for i, r in enumerate(records)])
    assert [o.kind for o in outcomes] == ["verdict"] * len(records)
    for o, r in zip(outcomes, records, strict=True):
        assert o.verdict is not None and o.verdict.event_id == r.event_id
        assert o.verdict.quality.status is QualityStatus.PASS
        assert set(o.verdict.scores) == set(screener.bundle.task_ids)
        assert all(0.0 <= s <= 1.0 for s in o.verdict.scores.values())
        assert o.verdict.model.trained is False
        assert {a.alert_id for a in o.alerts} == set(o.verdict.alert_ids)


def test_every_malformed_payload_is_dead_lettered_with_its_reason(screener: Screener, records) -> None:  # type: ignore[no-untyped-def]
    cases = malformed_payloads(records[0].encode())
    outcomes = screener.screen([msg(bad, i) for i, (_, bad) in enumerate(cases)])
    assert [o.deadletter.reason if o.deadletter else None for o in outcomes] == [reason for reason, _ in cases]
    assert all(o.deadletter and o.deadletter.offset == i for i, o in enumerate(outcomes))


def test_signal_faults_are_gated_before_the_model(screener: Screener, records) -> None:  # type: ignore[no-untyped-def]
    faulty = [with_fault(records[0], f) for f in (SignalFault.ALL_FLAT, SignalFault.LEAD_OFF)]
    outcomes = screener.screen([msg(r.encode(), i) for i, r in enumerate(faulty)])
    for o in outcomes:
        assert o.verdict is not None and o.verdict.quality.status is QualityStatus.REJECT
        assert o.verdict.scores == {} and o.alerts == ()


def test_mixed_batch_keeps_order_and_count(screener: Screener, records) -> None:  # type: ignore[no-untyped-def]
    good = [r.encode() for r in records[:3]]
    batch = [good[0], b"{not json", good[1], b"", good[2]]
    outcomes = screener.screen([msg(p, i) for i, p in enumerate(batch)])
    assert [o.kind for o in outcomes] == ["verdict", "deadletter", "verdict", "deadletter", "verdict"]
    assert [o.message.offset for o in outcomes] == [0, 1, 2, 3, 4]


def test_engine_failure_becomes_dead_letters_not_a_crash(bundle: Bundle, records) -> None:  # type: ignore[no-untyped-def]
    class Broken:
        name = "broken"

        def infer(self, x):  # type: ignore[no-untyped-def]
            raise RuntimeError("CUDA error: out of memory")

    outcomes = Screener(bundle=bundle, engine=Broken()).screen([msg(records[0].encode())])
    assert outcomes[0].deadletter is not None
    assert outcomes[0].deadletter.reason.value == "processing_failed"
    assert outcomes[0].deadletter.event_id == records[0].event_id


def test_classify_splits_fresh_duplicates_and_conflicts(records) -> None:  # type: ignore[no-untyped-def]
    a, b = records[0].encode(), records[1].encode()
    changed = records[0].encode().replace(b'"patient_ref":"', b'"patient_ref":"x', 1)
    msgs = [msg(a), msg(b), msg(a), msg(changed), msg(b"garbage"), msg(b"garbage")]
    recorded = [None, (msg(b).digest, "verdict"), None, None, None, None]
    fresh, dup, conflict = classify(msgs, recorded)
    assert fresh == [0, 4]  # b was recorded in an earlier batch
    assert dup == [1, 2, 5]  # the same payload again, here or earlier
    assert conflict == [3]  # same event id, different content


def test_unreadable_payloads_are_keyed_by_their_hash() -> None:
    m = msg(b"\x00\x01")
    assert m.key == f"sha256:{m.digest}"


def test_bundle_input_spec_drives_preprocessing(tmp_path: Path, records) -> None:  # type: ignore[no-untyped-def]
    from models.config import InputSpec

    b500 = init_untrained_bundle(tmp_path / "b500", base_width=8, input_spec=InputSpec(500.0, 5000))
    s = Screener(bundle=b500, engine=make_engine(b500, "torch-cpu"))
    (o,) = s.screen([msg(records[0].encode())])
    assert o.verdict is not None and set(o.verdict.scores) == set(b500.task_ids)


def overflowing_bundle(path: Path) -> Bundle:
    """Finite head weights whose sums overflow (inf - inf): loads fine, every score is NaN."""
    b = init_untrained_bundle(path / "untrained", base_width=8)
    with torch.no_grad():
        half = b.model.heads.weight.shape[1] // 2
        b.model.heads.weight[:, :half] = 3e38
        b.model.heads.weight[:, half:] = -3e38
    assert torch.isfinite(b.model.heads.weight).all()
    save_bundle(path / "overflow", b.config, b.model)
    return load_bundle(path / "overflow")


def test_non_finite_model_output_is_a_dead_letter_of_its_own(tmp_path: Path, records) -> None:  # type: ignore[no-untyped-def]
    bundle = overflowing_bundle(tmp_path)
    screener = Screener(bundle=bundle, engine=make_engine(bundle, "torch-cpu"))
    flat = with_fault(records[1], SignalFault.ALL_FLAT)  # gated before the model: still a verdict
    outcomes = screener.screen([msg(records[0].encode(), 0), msg(flat.encode(), 1)])
    nan, gated = outcomes
    assert nan.deadletter is not None and nan.deadletter.reason is DeadLetterReason.NON_FINITE_OUTPUT
    assert nan.alerts == () and nan.deadletter.event_id == records[0].event_id
    assert gated.verdict is not None and gated.verdict.quality.status is QualityStatus.REJECT
    encode_deadletter(nan.deadletter)  # what the worker publishes encodes


def test_a_nan_producing_bundle_gives_dead_letters_not_a_stall(tmp_path: Path, records) -> None:  # type: ignore[no-untyped-def]
    """Issue 11's poison pill through the worker's batch loop (fake Redis and Kafka clients): it used
    to retry the EncodeError of NaN alerts until exit 75, for ever; now each record is a dead letter."""
    from tests.test_app import harness

    bundle = overflowing_bundle(tmp_path)
    h = harness(timeout_s=120.0, screener=Screener(bundle=bundle, engine=make_engine(bundle, "torch-cpu")))
    started = time.monotonic()
    h.handle([msg(r.encode(), i) for i, r in enumerate(records[:3])])
    assert time.monotonic() - started < 30.0
    assert h.deadletters() == dict.fromkeys([r.event_id for r in records[:3]], DeadLetterReason.NON_FINITE_OUTPUT)
    assert h.verdicts() == [] and h.alerts() == [] and h.triage.admitted == {}
    assert {o.kind for o in h.triage.outcomes.values()} == {"deadletter"}
