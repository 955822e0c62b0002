"""The fault suite: scenarios that break the worker's world on purpose and count what survives.

Each scenario starts its own Kafka-protocol broker (Tansu) and Redis on loopback,
runs the real worker as subprocesses, injects one kind of fault, accounts for
every event, writes one JSON result and stops everything it started (also on
failure, timeout and Ctrl-C). ``ecgscreen chaos report`` turns the results into
the table in ``docs/reliability.md``.
"""
