#!/bin/sh
# Healthy when the broker answers an ApiVersions request on its client listener.
set -eu
. /etc/kafka/scripts/client-env.sh
/opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server "$BOOTSTRAP" $CFG >/dev/null
