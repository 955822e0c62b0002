"""The worker's batch loop (workers/app.py BatchRunner) against fake Redis and Kafka clients.

The fakes fail on cue, so each path of a batch is exercised: transient faults retried, the
exit-75 path, permanent faults dead-lettered per record without a retry loop, a batch that
fails in screening, duplicates and conflicts across batches. The real servers are covered by
tests/test_integration.py and tests/test_crash_recovery.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, RequestTimedOutError
from faust.exceptions import ProducerSendError
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import workers.app as app_module
from schemas.codec import EncodeError, Limits, decode_alert, decode_deadletter, decode_verdict
from schemas.messages import Alert, DeadLetterReason, ModelRef, Priority, Quality, QualityStatus, Verdict
from tests.triage_factory import T0, make_alert
from workers.app import EX_CONFIG, EX_TEMPFAIL, BatchRunner, is_transient
from workers.app import _to_publish as to_publish
from workers.pipeline import Outcome, RawMessage
from workers.policy import Admission
from workers.settings import Settings, load_settings
from workers.triage import Admitted, RecordedOutcome

TOPICS = load_settings({}).kafka.topics


# --- fakes -------------------------------------------------------------------------------------


class Exited(BaseException):  # stands for the process exit: no handler may swallow it
    def __init__(self, code: int) -> None:
        self.code = code


def _exit(code: int) -> None:
    raise Exited(code)


@dataclass
class FakeProducer:
    """faust's producer: ``send`` returns a future resolved by the broker's ack."""

    acked: list[tuple[str, str, bytes]] = field(default_factory=list)
    faults: list[Exception] = field(default_factory=list)  # raised by the next sends, in order
    refuse: dict[tuple[str, str], Exception] = field(default_factory=dict)  # (topic, key) refused for ever

    async def send(self, topic: str, key: bytes, value: bytes, **_: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.faults:
            raise self.faults.pop(0)
        if (topic, key.decode()) in self.refuse:
            fut.set_exception(self.refuse[topic, key.decode()])
        else:
            self.acked.append((topic, key.decode(), value))
            fut.set_result(None)
        return fut

    def on(self, topic: str) -> list[tuple[str, bytes]]:
        return [(k, v) for t, k, v in self.acked if t == topic]


@dataclass
class FakeApp:
    producer: FakeProducer = field(default_factory=FakeProducer)


@dataclass
class FakeTriage:
    """TriageStore's worker side, in memory, failing on cue per method."""

    outcomes: dict[str, RecordedOutcome] = field(default_factory=dict)
    admitted: dict[str, Alert] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    faults: dict[str, list[Exception]] = field(default_factory=dict)  # method -> next errors
    always: dict[str, Exception] = field(default_factory=dict)  # method -> error on every call
    poison: dict[str, Exception] = field(default_factory=dict)  # alert id -> error whenever it is added
    calls: dict[str, int] = field(default_factory=dict)

    def _enter(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if method in self.always:
            raise self.always[method]
        if self.faults.get(method):
            raise self.faults[method].pop(0)

    async def recorded_outcomes(self, keys: Sequence[str]) -> list[RecordedOutcome | None]:
        self._enter("recorded_outcomes")
        return [self.outcomes.get(k) for k in keys]

    async def add_alerts(self, alerts: Sequence[Alert], waveforms: Any = None) -> list[Admitted]:
        self._enter("add_alerts")
        for a in alerts:
            if a.alert_id in self.poison:
                raise self.poison[a.alert_id]
        out = [Admitted(a.alert_id, Admission.ADDED, a.alert_id, a, a.alert_id in self.admitted) for a in alerts]
        self.admitted.update((a.alert_id, a) for a in alerts)
        return out

    async def record_outcomes(self, done: Sequence[tuple[str, RecordedOutcome]], ttl_s: int,
                              counts: dict[str, int] | None = None) -> None:
        self._enter("record_outcomes")
        for key, out in done:
            self.outcomes.setdefault(key, out)  # NX, as in Redis
        for name, n in (counts or {}).items():
            self.counters[name] = self.counters.get(name, 0) + n

    async def count(self, name: str, n: int = 1) -> None:
        self._enter("count")
        self.counters[name] = self.counters.get(name, 0) + n

    async def close(self) -> None:
        pass


MODEL = ModelRef("m", "1", "0" * 64, True)


class FakeScreener:
    """Payloads say what to become: {"event_id", "kind": verdict | alert | crash}.

    A ``crash`` record makes any batch holding it raise, as a bug in the gate would.
    """

    limits = Limits()

    def __init__(self) -> None:
        self.batches: list[int] = []

    def screen(self, batch: Sequence[RawMessage], prepared: Any = None) -> list[Outcome]:
        self.batches.append(len(batch))
        docs = [orjson.loads(m.value) for m in batch]
        if any(d["kind"] == "crash" for d in docs):
            raise RuntimeError("gate bug")
        return [self._outcome(m, d) for m, d in zip(batch, docs, strict=True)]

    def _outcome(self, msg: RawMessage, doc: dict[str, Any]) -> Outcome:
        alerts = (dataclasses.replace(make_alert(int(doc["n"])), event_id=doc["event_id"]),) \
            if doc["kind"] == "alert" else ()
        verdict = Verdict(event_id=doc["event_id"], patient_ref="p-1", site="site-a", acquired_at=T0, model=MODEL,
                          quality=Quality(QualityStatus.PASS), scores={"ecg.afib": 0.9 if alerts else 0.1},
                          alert_ids=tuple(a.alert_id for a in alerts), timings_ms={}, processed_at=T0)
        return Outcome(msg, verdict=verdict, alerts=alerts)


@pytest.fixture(autouse=True)
def _no_waveforms(monkeypatch: pytest.MonkeyPatch) -> None:
    """These payloads are not ECG events, so there is no signal to keep beside an alert (the
    waveform copy is tested end to end in tests/test_integration.py)."""
    monkeypatch.setattr(app_module, "alert_waveforms", lambda outcomes: {})


def msg(n: int, kind: str = "verdict", offset: int = 0, variant: int = 0) -> RawMessage:
    payload = orjson.dumps({"event_id": f"e-{n}", "kind": kind, "n": n, "variant": variant})
    return RawMessage.of(payload, TOPICS.events, 0, offset)


@dataclass
class Harness:
    runner: BatchRunner
    producer: FakeProducer
    triage: FakeTriage
    screener: Any  # FakeScreener, or a real Screener

    def handle(self, messages: Sequence[RawMessage]) -> None:
        asyncio.run(self.runner.handle(messages))

    def verdicts(self) -> list[str]:
        return [decode_verdict(v).event_id for _, v in self.producer.on(TOPICS.verdicts)]

    def deadletters(self) -> dict[str, DeadLetterReason]:
        return {k: decode_deadletter(v).reason for k, v in self.producer.on(TOPICS.deadletter)}

    def alerts(self) -> list[str]:
        return [decode_alert(v).alert_id for _, v in self.producer.on(TOPICS.alerts)]


def harness(timeout_s: float = 5.0, triage: FakeTriage | None = None, screener: Any = None) -> Harness:
    """A runner over fakes; ``screener`` may be a real :class:`Screener`."""
    settings: Settings = dataclasses.replace(load_settings({}), durable_write_timeout_s=timeout_s)
    app, fake, screener = FakeApp(), triage or FakeTriage(), screener or FakeScreener()
    runner = BatchRunner(app, settings, screener, triage=fake, exit_process=_exit)  # type: ignore[arg-type]
    return Harness(runner, app.producer, fake, screener)


# --- the paths of one batch ----------------------------------------------------------------------


def test_a_batch_becomes_durable_outcomes() -> None:
    h = harness()
    h.handle([msg(1), msg(2, "alert"), msg(3)])
    assert h.verdicts() == ["e-1", "e-2", "e-3"] and h.alerts() == ["al_0002"] and h.deadletters() == {}
    assert {k: o.kind for k, o in h.triage.outcomes.items()} == dict.fromkeys(["e-1", "e-2", "e-3"], "verdict")
    assert h.screener.batches == [3]


def test_duplicates_and_conflicts_across_batches() -> None:
    h = harness()
    h.handle([msg(1), msg(2, "alert")])
    first = dict(h.triage.outcomes)
    h.handle([msg(1), msg(2, "alert", variant=1), msg(3), msg(3)])  # e-1 again, e-2 reused, e-3 twice
    assert h.verdicts() == ["e-1", "e-2", "e-3"]  # nothing screened twice
    assert h.deadletters() == {"e-2": DeadLetterReason.EVENT_ID_CONFLICT}
    assert h.triage.outcomes["e-2"] == first["e-2"]  # the first outcome stands
    assert h.triage.counters["duplicates_skipped"] == 2 and h.screener.batches == [2, 1]


def test_a_batch_scored_while_the_one_before_is_stored_sees_its_outcomes() -> None:
    """The pipelined loop scores batch N+1 before batch N is durable: duplicates and conflicts of N's
    events must still be sorted out as if N were recorded."""
    h = harness()

    async def overlapped() -> None:
        first = await h.runner.score([msg(1), msg(2, "alert")])
        assert h.triage.outcomes == {}  # nothing durable yet
        second = await h.runner.score([msg(1), msg(2, "alert", variant=1), msg(3)])
        await h.runner.store(first)
        await h.runner.store(second)
        third = await h.runner.score([msg(1), msg(3)])  # both durable by now: from the ledger
        await h.runner.store(third)

    asyncio.run(overlapped())
    assert h.verdicts() == ["e-1", "e-2", "e-3"] and h.screener.batches == [2, 1]
    assert h.deadletters() == {"e-2": DeadLetterReason.EVENT_ID_CONFLICT}
    assert h.triage.counters["duplicates_skipped"] == 3
    assert h.runner._pending == {}  # everything scored is durable


def test_transient_faults_are_retried_until_durable() -> None:
    triage = FakeTriage(faults={"recorded_outcomes": [BusyLoadingError("loading")],
                                "add_alerts": [RedisConnectionError("reset"), RedisTimeoutError("slow")],
                                "record_outcomes": [ResponseError("BUSY Redis is busy running a script")]})
    h = harness(triage=triage)
    h.producer.faults = [ProducerSendError("send")]
    h.producer.faults[0].__cause__ = RequestTimedOutError()
    h.handle([msg(1, "alert"), msg(2)])
    assert h.verdicts() == ["e-1", "e-2"] and h.alerts() == ["al_0001"] and h.deadletters() == {}
    assert set(h.triage.outcomes) == {"e-1", "e-2"}
    assert triage.calls["add_alerts"] == 3 and triage.calls["record_outcomes"] == 2


def test_a_transient_fault_past_the_deadline_exits_75_without_recording() -> None:
    h = harness(timeout_s=0.5, triage=FakeTriage(always={"record_outcomes": RedisConnectionError("down")}))
    started = time.monotonic()
    with pytest.raises(Exited) as exited:
        h.handle([msg(1), msg(2)])
    assert exited.value.code == EX_TEMPFAIL and time.monotonic() - started < 3.0
    assert h.triage.outcomes == {}  # the batch was never marked done, so it is redelivered


def test_stopping_exits_at_the_first_failed_write() -> None:
    h = harness(timeout_s=120.0, triage=FakeTriage(always={"add_alerts": RedisConnectionError("down")}))
    h.runner.stopping = True  # SIGTERM arrived
    started = time.monotonic()
    with pytest.raises(Exited) as exited:
        h.handle([msg(1, "alert")])
    assert exited.value.code == EX_TEMPFAIL and time.monotonic() - started < 1.0
    assert h.producer.acked == []


def test_a_permanent_fault_dead_letters_its_record_only_and_never_loops() -> None:
    """A script error for one alert: that event is dead-lettered, its neighbours go through."""
    script_error = ResponseError("ERR user_script:12: Script attempted to access nonexistent global variable")
    triage = FakeTriage(poison={"al_0002": script_error})
    h = harness(timeout_s=120.0, triage=triage)
    started = time.monotonic()
    h.handle([msg(1, "alert"), msg(2, "alert"), msg(3)])
    assert time.monotonic() - started < 2.0 and triage.calls["add_alerts"] <= 5
    assert h.verdicts() == ["e-1", "e-3"] and h.alerts() == ["al_0001"]
    assert h.deadletters() == {"e-2": DeadLetterReason.PROCESSING_FAILED}
    assert {k: o.kind for k, o in triage.outcomes.items()} == {"e-1": "verdict", "e-2": "deadletter",
                                                                "e-3": "verdict"}


def test_a_record_the_broker_refuses_is_dead_lettered() -> None:
    h = harness(timeout_s=120.0)
    h.producer.refuse = {(TOPICS.verdicts, "e-2"): MessageSizeTooLargeError()}
    h.handle([msg(1), msg(2), msg(3)])
    # e-1 and e-3 were acked in the batch attempt and again record by record: at-least-once.
    assert h.verdicts() == ["e-1", "e-3", "e-1", "e-3"]
    letters = {k: decode_deadletter(v) for k, v in h.producer.on(TOPICS.deadletter)}
    assert set(letters) == {"e-2"} and "MessageSizeTooLargeError" in letters["e-2"].detail


def test_an_alert_that_will_not_encode_is_dead_lettered_not_retried() -> None:
    """The poison pill of issue 11: EncodeError used to be retried for 120 s, then exit 75, for ever."""
    triage = FakeTriage(poison={"al_0001": EncodeError("score nan is not a number in [0, 1]")})
    h = harness(timeout_s=120.0, triage=triage)
    started = time.monotonic()
    h.handle([msg(1, "alert"), msg(2)])
    assert time.monotonic() - started < 2.0
    assert h.deadletters() == {"e-1": DeadLetterReason.PROCESSING_FAILED} and h.verdicts() == ["e-2"]


def test_an_acl_refusal_of_the_ledger_read_stops_with_a_config_exit() -> None:
    h = harness(triage=FakeTriage(always={"recorded_outcomes": NoPermissionError("No permissions")}))
    with pytest.raises(Exited) as exited:
        h.handle([msg(1)])
    assert exited.value.code == EX_CONFIG and h.producer.acked == []


def test_a_dead_letter_that_cannot_be_stored_stops_the_worker() -> None:
    h = harness(triage=FakeTriage(always={"record_outcomes": NoPermissionError("No permissions")}))
    with pytest.raises(Exited) as exited:
        h.handle([msg(1)])
    assert exited.value.code == EX_CONFIG


def test_a_failed_batch_is_screened_record_by_record() -> None:
    """Findings 3 and 4: only the failing record is dead-lettered, and no event whose outcome
    is recorded (a duplicate, a conflict) gets a second one."""
    h = harness()
    h.handle([msg(1), msg(2)])
    h.handle([msg(1), msg(2, variant=1), msg(3), msg(4, "crash"), msg(5, "alert")])
    assert h.screener.batches == [2, 3, 1, 1, 1]  # the batch of fresh ones, then each alone
    assert h.verdicts() == ["e-1", "e-2", "e-3", "e-5"] and h.alerts() == ["al_0005"]
    assert h.deadletters() == {"e-2": DeadLetterReason.EVENT_ID_CONFLICT, "e-4": DeadLetterReason.PROCESSING_FAILED}
    assert h.triage.outcomes["e-1"].kind == "verdict" and h.triage.counters["duplicates_skipped"] == 1


@pytest.mark.parametrize(("exc", "transient"), [
    (RedisConnectionError("reset"), True),
    (BusyLoadingError("loading"), True),
    (ResponseError("BUSY Redis is busy running a script"), True),
    (ResponseError("TRYAGAIN"), True),
    (RedisTimeoutError(), True),
    (KafkaConnectionError(), True),
    (RequestTimedOutError(), True),
    (ConnectionRefusedError(), True),
    (TimeoutError(), True),
    (NoPermissionError("No permissions"), False),
    (ResponseError("ERR Error running script"), False),
    (EncodeError("bad"), False),
    (MessageSizeTooLargeError(), False),
    (ValueError("validation"), False),
])
def test_fault_classes(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_to_publish_is_each_target_once_at_its_latest_view_without_suppressed() -> None:
    a1, a2 = make_alert(1, score=0.7), make_alert(2, score=0.6)
    newer = dataclasses.replace(a1, score=0.95, priority=Priority.URGENT)
    admitted = [Admitted("al_0001", Admission.ADDED, "al_0001", a1),
                Admitted("al_0009", Admission.UPDATED, "al_0001", newer),
                Admitted("al_0008", Admission.SUPPRESSED, "al_0002", a2),
                Admitted("al_0003", Admission.HELD, "al_0003", make_alert(3)),
                Admitted("al_0004", Admission.ADDED, "al_0004", make_alert(4), replay=True)]
    assert [(a.alert_id, a.score) for a in to_publish(admitted)] == [
        ("al_0001", 0.95), ("al_0003", 0.9), ("al_0004", 0.9)]

