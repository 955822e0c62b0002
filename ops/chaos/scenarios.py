"""The scenario registry: name -> what it does, its time bound and the stack it needs."""

from __future__ import annotations

from ops.chaos import faults, fuzz, hostile, stream
from ops.chaos.run import Scenario

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("kill9", "kill -9 at random points", stream.kill9, (300, 1800)),
    Scenario("sigterm", "SIGTERM mid-batch / broker down / Redis down", stream.sigterm, (300, 900)),
    Scenario("rebalance", "rebalance churn, 3 workers on 6 partitions", stream.rebalance, (300, 1500), partitions=6),
    Scenario("redis", "Redis refusing / blackholed / slow (TCP proxy)", faults.redis_faults, (300, 900),
             worker_env={"ECGSCREEN_DURABLE_WRITE_TIMEOUT_S": str(faults.REDIS_DEADLINE_S)}),
    Scenario("broker", "broker loss, then an empty broker", faults.broker_loss, (300, 900),
             worker_env={"ECGSCREEN_BROKER_LOST_EXIT_S": str(faults.BROKER_DEADLINE_S)}),
    Scenario("poison", "poison and absurd input, NaN-producing model", hostile.poison, (400, 1800)),
    Scenario("fuzz", "fuzzing of decoder and gate", fuzz.fuzz, (300, 3600), partitions=0),
    Scenario("replay", "replay safety", stream.replay, (300, 900)),
    Scenario("privacy", "privacy canary", hostile.privacy, (300, 600)),
    Scenario("soak", "soak at a steady rate", stream.soak, (300, 2700)),
)}
