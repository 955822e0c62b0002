#!/bin/sh
# Creates what docker-compose.yml reads from files and the repository must never hold:
#   ops/deploy/secrets/  one random password per user (Redis ACL users, Kafka SCRAM users, Grafana)
#   ops/deploy/tls/      a private CA and server certificates for docker-compose.secure.yml
# Existing files are kept (rotate a password by deleting its file and re-running, then
# restarting the services that use it). A hospital replaces the CA with its own PKI.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets tls
for name in redis_admin redis_worker redis_reviewer redis_auditor redis_metrics \
            kafka_admin kafka_worker kafka_subscriber grafana_admin; do
  f="secrets/${name}_password"
  [ -s "$f" ] || openssl rand -base64 30 | tr -d '\n/+=' > "$f"
done
pw="$(cat secrets/redis_metrics_password)"  # redis_exporter reads a JSON map of address -> password
printf '{"redis://redis:6379": "%s", "rediss://redis:6379": "%s"}\n' "$pw" "$pw" > secrets/redis_exporter_passwords
# Containers run as other users than the one who ran this script: they must be able to read them.
chmod 0644 secrets/*

if [ ! -s tls/ca.pem ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=ecgscreen-dev-ca" \
    -keyout tls/ca.key -out tls/ca.pem
fi
issue() {  # issue NAME: key + certificate for host NAME signed by the CA
  [ -s "tls/$1.crt" ] && return 0
  openssl req -newkey rsa:3072 -nodes -subj "/CN=$1" -keyout "tls/$1.key" -out "tls/$1.csr"
  printf 'subjectAltName=DNS:%s,DNS:localhost\n' "$1" > "tls/$1.ext"
  openssl x509 -req -in "tls/$1.csr" -CA tls/ca.pem -CAkey tls/ca.key -CAcreateserial -days 825 \
    -extfile "tls/$1.ext" -out "tls/$1.crt"
  rm -f "tls/$1.csr" "tls/$1.ext"
}
issue kafka
issue redis
cat tls/kafka.key tls/kafka.crt > tls/kafka.pem  # Kafka's PEM keystore: key and chain in one file
chmod 0644 tls/*.pem tls/*.crt tls/kafka.key tls/redis.key  # the CA key stays 0600
echo "secrets in $(pwd)/secrets, TLS material in $(pwd)/tls"
