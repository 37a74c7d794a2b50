#!/usr/bin/env bash
# Runs one Apache Kafka node in KRaft mode (broker and controller in one process) on 127.0.0.1,
# in the foreground: what `make demo`, the tests and the benchmarks start. The broker comes from
# `make deps` (Maven Central, into the cache). Formats DIR on first use, then starts on it again
# as often as asked (a restart keeps the node's log and metadata).
#
#   scripts/kafka-broker.sh DIR PORT CONTROLLER_PORT [NODE_ID VOTERS] [-- KEY=VALUE ...]
#
# One node: `--standalone` (a dynamic quorum of itself). A cluster: NODE_ID and VOTERS
# (`1@127.0.0.1:C1,2@127.0.0.1:C2,3@127.0.0.1:C3`, a static quorum), the same CLUSTER_ID for
# every node. Settings after `--` override the defaults below (`num.partitions=3`).
#
# Environment: SLUICE_CACHE (default ~/.cache/sluice), KAFKA_VERSION (4.1.1), KAFKA_HEAP
# (default 512m: several brokers fit a 2-core test machine), CLUSTER_ID (a cluster's nodes must
# share one; default: a fixed id). Logs go to DIR/broker.log.
#
# Secured (KAFKA_TLS_DIR set): two more listeners and authorization.
#   KAFKA_TLS_DIR   made by scripts/tls-certs.sh: ca.crt (trusted for clients) and broker.pem
#   SASL_SSL_PORT   SASL over TLS: SCRAM-SHA-512, SCRAM-SHA-256, PLAIN and OAUTHBEARER (Kafka's
#                   unsecured JWT validator: tokens are not signed; a test stand-in for an IdP)
#   SSL_PORT        TLS with a required client certificate (mTLS): principal User:CN=<name>
#   KAFKA_USERS     `name=password ...`: SCRAM-SHA-512 and -256 credentials written at format
#                   time, and PLAIN users
#   ADVERTISED_HOST the host name the secured listeners advertise (default 127.0.0.1)
# The StandardAuthorizer with allow.everyone.if.no.acl.found=false: a principal may do only what
# an ACL allows. The PLAINTEXT listener stays on 127.0.0.1 for the harness, whose principal
# (User:ANONYMOUS) is the only super user: it creates topics, users and ACLs, and checks results.
set -euo pipefail
usage() { echo "usage: $0 DIR PORT CONTROLLER_PORT [NODE_ID VOTERS] [-- KEY=VALUE ...]" >&2; exit 2; }
[ $# -ge 3 ] || usage
DIR=$1 PORT=$2 CPORT=$3; shift 3
NODE_ID=1 VOTERS=
if [ $# -ge 2 ] && [ "$1" != -- ]; then NODE_ID=$1 VOTERS=$2; shift 2; fi
if [ $# -ge 1 ]; then [ "$1" = -- ] || usage; shift; fi

CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
LIBS=$CACHE/kafka-${KAFKA_VERSION:-4.1.1}/libs
[ -f "$LIBS/.complete" ] || { echo "error: $LIBS: no Kafka broker: run \`make deps\` (it fetches Apache Kafka from Maven Central)" >&2; exit 1; }
command -v java >/dev/null || { echo "error: java not found: run \`make deps\` (it installs a JDK)" >&2; exit 1; }

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ -n "$VOTERS" ]; then
  quorum="controller.quorum.voters=$VOTERS"
  # Replicated internal topics, as a production cluster has them.
  replication=3 min_isr=2
else
  quorum="controller.quorum.bootstrap.servers=127.0.0.1:$CPORT"
  replication=1 min_isr=1
fi
props=$DIR/server.properties
listeners=PLAINTEXT://127.0.0.1:$PORT
protocols=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
scram=()
if [ -n "${KAFKA_TLS_DIR:-}" ]; then
  TLS=$(cd "$KAFKA_TLS_DIR" && pwd)
  [ -f "$TLS/broker.pem" ] && [ -f "$TLS/ca.crt" ] \
    || { echo "error: $TLS: no broker.pem or ca.crt: make them with scripts/tls-certs.sh $TLS broker" >&2; exit 1; }
  : "${SASL_SSL_PORT:?a secured node needs SASL_SSL_PORT}" "${SSL_PORT:?a secured node needs SSL_PORT}"
  advertised="$listeners,SASL_SSL://${ADVERTISED_HOST:-127.0.0.1}:$SASL_SSL_PORT,SSL://${ADVERTISED_HOST:-127.0.0.1}:$SSL_PORT"
  listeners="$listeners,SASL_SSL://127.0.0.1:$SASL_SSL_PORT,SSL://127.0.0.1:$SSL_PORT"
  protocols="$protocols,SASL_SSL:SASL_SSL,SSL:SSL"
  plain_users=
  for user in ${KAFKA_USERS:-}; do
    name=${user%%=*} password=${user#*=}
    scram+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$password]"
            --add-scram "SCRAM-SHA-256=[name=$name,password=$password]")
    plain_users="$plain_users user_$name=\"$password\""
  done
fi
cat >"$props" <<PROPS
process.roles=broker,controller
node.id=$NODE_ID
$quorum
listeners=$listeners,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=${advertised:-$listeners}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$DIR/data
# A group's first member does not wait 3 s for others; one partition for the internal topics
# (created on first use: 50 partitions each cost a fresh broker seconds).
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=1
offsets.topic.replication.factor=$replication
transaction.state.log.num.partitions=1
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replication
share.coordinator.state.topic.min.isr=$min_isr
# kill -9 tests: a dead member leaves its group within seconds, with either consumer protocol
# (classic: the client's session.timeout.ms, at least 1 s here; KIP-848: the broker's).
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=1000
group.consumer.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
# A transaction its producer left open (a kill -9 under an id nobody reuses) is aborted
# within a second of its transaction.timeout.ms, not up to 10 s later.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
# The log cleaner (compacted changelogs) with a small buffer instead of 128 MB of heap.
log.cleaner.dedupe.buffer.size=8388608
log.cleaner.backoff.ms=1000
num.partitions=1
PROPS
if [ -n "${KAFKA_TLS_DIR:-}" ]; then
  cat >>"$props" <<PROPS
# Secured listeners (KAFKA_TLS_DIR).
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.crt
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN,OAUTHBEARER
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$plain_users;
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";
listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.internals.unsecured.OAuthBearerUnsecuredValidatorCallbackHandler
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS
PROPS
fi
for kv in "$@"; do
  [[ $kv == *=* ]] || { echo "error: $kv: an override is KEY=VALUE" >&2; exit 2; }
  echo "$kv" >>"$props"
done

CP="$LIBS/*"
JAVA_OPTS=(-Xms${KAFKA_HEAP:-512m} -Xmx${KAFKA_HEAP:-512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -Djava.awt.headless=true
  -Dorg.slf4j.simpleLogger.showDateTime=true -Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS
  -Dorg.slf4j.simpleLogger.log.state.change.logger=warn
  -Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn)
if [ ! -f "$DIR/data/meta.properties" ]; then
  id=${CLUSTER_ID:-c2x1aWNlLXRlc3QtY2x1cw}
  if [ -n "$VOTERS" ]; then standalone=(); else standalone=(--standalone); fi
  java "${JAVA_OPTS[@]}" -cp "$CP" kafka.tools.StorageTool format "${standalone[@]}" "${scram[@]}" \
    -t "$id" -c "$props" >"$DIR/format.log" 2>&1 \
    || { echo "error: formatting $DIR/data failed: see $DIR/format.log" >&2; exit 1; }
fi
exec java "${JAVA_OPTS[@]}" -cp "$CP" kafka.Kafka "$props" >>"$DIR/broker.log" 2>&1
