#!/usr/bin/env bash
# Runs Apicurio Registry (from `make deps`: Maven Central, into the cache) on 127.0.0.1:PORT in
# the foreground, with in-memory storage: what `make demo` and the tests start. Its
# Confluent-compatible API is http://127.0.0.1:PORT/apis/ccompat/v7. Apicurio 3 needs Java 21 or
# newer: the first JDK of /usr/lib/jvm that is, else `java` on the PATH if it is.
#
#   scripts/schema-registry.sh PORT [MANAGEMENT_PORT]
#   scripts/schema-registry.sh --java     (prints the java it would use, or fails)
#
# Its management interface (health, metrics) listens on 127.0.0.1:MANAGEMENT_PORT (default
# PORT+1).
#
# Environment: SLUICE_CACHE (default ~/.cache/sluice), APICURIO_VERSION (3.3.3), REGISTRY_HEAP
# (default 256m), REGISTRY_TLS_CERT and REGISTRY_TLS_KEY (PEM files: serve HTTPS only, on PORT).
set -euo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 PORT [MANAGEMENT_PORT] | --java" >&2; exit 2; }
PORT=$1

java_major() { "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
JAVA=
for candidate in /usr/lib/jvm/*/bin/java "$(command -v java || true)"; do
  [ -x "$candidate" ] || continue
  major=$(java_major "$candidate")
  if [ -n "$major" ] && [ "$major" -ge 21 ]; then JAVA=$candidate; break; fi
done
[ -n "$JAVA" ] || { echo "error: Apicurio Registry needs Java 21 or newer and none was found in /usr/lib/jvm or on the PATH: install one (apt-get install openjdk-21-jre-headless)" >&2; exit 1; }
if [ "$PORT" = --java ]; then echo "$JAVA"; exit 0; fi

CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
APP=$CACHE/apicurio-registry-${APICURIO_VERSION:-3.3.3}
[ -f "$APP/.complete" ] || { echo "error: $APP: no schema registry: run \`make deps\` (it fetches Apicurio Registry from Maven Central)" >&2; exit 1; }

tls=()
if [ -n "${REGISTRY_TLS_CERT:-}" ]; then
  tls=(-Dquarkus.http.ssl-port="$PORT" -Dquarkus.http.insecure-requests=disabled
       -Dquarkus.http.ssl.certificate.files="$REGISTRY_TLS_CERT"
       -Dquarkus.http.ssl.certificate.key-files="${REGISTRY_TLS_KEY:?REGISTRY_TLS_KEY: the key of REGISTRY_TLS_CERT}")
fi
exec "$JAVA" -Xmx${REGISTRY_HEAP:-256m} -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
  -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT" \
  -Dquarkus.log.level=WARN -Dquarkus.banner.enabled=false -Dquarkus.http.access-log.enabled=false \
  -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="${2:-$((PORT + 1))}" \
  "${tls[@]}" -jar "$APP/quarkus-run.jar"
