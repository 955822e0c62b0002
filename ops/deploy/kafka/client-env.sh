# Sourced by the Kafka tool scripts: sets BOOTSTRAP and CFG (the --command-config option).
# With KAFKA_CLIENT_TEMPLATE (docker-compose.secure.yml), the admin's SCRAM login is added from
# its secret into a private temp file, so no password sits in the repository or the environment.
BOOTSTRAP="${KAFKA_BOOTSTRAP:-kafka:9092}"
CFG=""
if [ -n "${KAFKA_CLIENT_TEMPLATE:-}" ]; then
  umask 077
  props="$(mktemp)"
  cp "$KAFKA_CLIENT_TEMPLATE" "$props"
  printf 'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="%s";\n' \
    "$(cat /run/secrets/kafka_admin_password)" >> "$props"
  CFG="--command-config $props"
fi
