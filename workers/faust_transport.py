"""faust's aiokafka transport, with the worker consumer's fetch wait taken from settings.

faust-streaming builds its worker consumer with ``fetch_max_wait_ms=1500`` and offers no
setting for it. Apache Kafka answers a fetch as soon as a record arrives, so there the wait
only sets how often an idle consumer polls; a broker that holds a fetch until its wait ends
(Tansu, here) adds up to that wait to every event's latency: p99 1.1 s at 20 ECG/s with 1.5 s,
0.35 s with 0.1 s (``ops.bench_worker``). Everything else is faust's own consumer.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when start() builds its fetcher; the consumer is not started yet.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class KafkaTransport(faust_aiokafka.Transport):
    Consumer = _Consumer
    fetch_max_wait_ms: int = 1500  # faust's own value; use_transport sets the configured one


def use_transport(app: faust.App, fetch_max_wait_s: float) -> KafkaTransport:
    """Give ``app`` this transport; call before the app declares topics or starts."""
    transport = KafkaTransport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = max(1, round(fetch_max_wait_s * 1000))
    app.transport = transport
    return transport
