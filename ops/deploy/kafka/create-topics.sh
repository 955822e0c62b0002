#!/bin/sh
# Creates the worker's topics with their partitions and retention, and enforces the retention
# on topics that already exist (partitions are only ever raised by hand: raising them moves
# keys to other partitions). Runs in the apache/kafka image (client-env.sh: SASL/TLS when set).
set -eu
. /etc/kafka/scripts/client-env.sh
RF="${KAFKA_REPLICATION_FACTOR:-1}"
DAY=86400000

# topic           partitions  retention (ms)   why
# ecg.events      12          7 d              the replay window: events older than this cannot be re-screened
# ecg.verdicts    12          30 d             audit and model monitoring read them
# ecg.alerts      6           90 d             subscribers (FHIR export) can be rebuilt from the topic
# ecg.deadletter  3           90 d             a person must look at each; slow to get to
while read -r topic partitions days; do
  /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$BOOTSTRAP" $CFG --create --if-not-exists \
    --topic "$topic" --partitions "$partitions" --replication-factor "$RF" \
    --config "retention.ms=$((days * DAY))" --config cleanup.policy=delete
  /opt/kafka/bin/kafka-configs.sh --bootstrap-server "$BOOTSTRAP" $CFG --alter --entity-type topics \
    --entity-name "$topic" --add-config "retention.ms=$((days * DAY))"
done <<TOPICS
ecg.events 12 7
ecg.verdicts 12 30
ecg.alerts 6 90
ecg.deadletter 3 90
TOPICS
/opt/kafka/bin/kafka-topics.sh --bootstrap-server "$BOOTSTRAP" $CFG --describe --topic 'ecg\..*' | grep PartitionCount
touch /tmp/topics.done
