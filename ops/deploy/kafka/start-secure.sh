#!/bin/sh
# Formats the KRaft log dir with the SCRAM credentials of every user (KIP-900: --add-scram),
# from secret files, then starts the broker. Formatting is skipped when already done, so the
# credentials of an existing cluster are changed with kafka-configs.sh --alter, not here.
set -eu
CONFIG=/etc/kafka/scripts/server-secure.properties
: "${CLUSTER_ID:?set CLUSTER_ID (kafka-storage.sh random-uuid)}"
scram() { printf 'SCRAM-SHA-512=[name=%s,password=%s]' "$1" "$(cat "/run/secrets/$2")"; }
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$CLUSTER_ID" --config "$CONFIG" \
  --add-scram "$(scram admin kafka_admin_password)" \
  --add-scram "$(scram ecgscreen-worker kafka_worker_password)" \
  --add-scram "$(scram ecgscreen-subscriber kafka_subscriber_password)"
# The broker's own inter-broker login (JAAS) from the admin secret: passed on the command line,
# never written to a file.
exec /opt/kafka/bin/kafka-server-start.sh "$CONFIG" \
  --override "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$(cat /run/secrets/kafka_admin_password)\";"
