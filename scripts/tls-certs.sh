#!/usr/bin/env bash
# A test certificate authority and certificates signed by it, with openssl, for the secured
# Kafka of the tests and benchmarks (scripts/kafka-broker.sh with KAFKA_TLS_DIR).
#
#   scripts/tls-certs.sh DIR NAME[:PASSWORD] ...
#
# Makes DIR/ca.crt and DIR/ca.key once (kept if present), then for each NAME a certificate
# whose subject is CN=NAME (the broker sees an mTLS client as principal User:CN=NAME), valid for
# 127.0.0.1 and localhost (TLS_SAN overrides: `DNS:localhost` alone makes a certificate that
# 127.0.0.1 does not match):
#   NAME.crt   the certificate (PEM)
#   NAME.key   its private key (PKCS#8 PEM), encrypted with PASSWORD when one is given
#   NAME.pem   key and certificate in one file: a Kafka broker's PEM keystore
# Keys are mode 600. Certificates are valid for 2 days: the tests make fresh ones.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DIR NAME[:PASSWORD] ..." >&2; exit 2; }
command -v openssl >/dev/null || { echo "error: openssl not found: apt-get install openssl" >&2; exit 1; }
DIR=$1; shift
mkdir -p "$DIR"
cd "$DIR"
umask 077
if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
    -subj /CN=sluice-test-ca 2>/dev/null
  chmod 644 ca.crt
fi
for spec in "$@"; do
  name=${spec%%:*}
  password=
  [ "$spec" = "$name" ] || password=${spec#*:}
  openssl req -newkey rsa:2048 -nodes -keyout "$name.raw.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "${TLS_SAN:-IP:127.0.0.1,DNS:localhost}" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
    -days 2 -extfile "$name.ext" 2>/dev/null
  if [ -n "$password" ]; then
    openssl pkcs8 -topk8 -in "$name.raw.key" -out "$name.key" -v2 aes-256-cbc -passout "pass:$password"
  else
    openssl pkcs8 -topk8 -nocrypt -in "$name.raw.key" -out "$name.key"
  fi
  cat "$name.key" "$name.crt" >"$name.pem"
  rm -f "$name.raw.key" "$name.csr" "$name.ext"
  chmod 644 "$name.crt"
done
