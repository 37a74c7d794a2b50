#!/usr/bin/env bash
# The Kafka half of `make demo`: a fresh Apache Kafka broker (KRaft, one node) on 127.0.0.1, the sample bookings produced
# with the reference client, the filter-and-enrich plugin run by `sluice run` until every input
# offset is committed (with its admin endpoint on, shown by `sluice status` and a few metrics),
# then the output topics read back; then the same with Avro in and out through a schema registry
# (Apicurio Registry, the bookings written by confluent-kafka's Avro serializer, the enriched
# records read back by its deserializer). Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
PY=$CACHE/venv/bin/python
TOOL=tests/tools/kafka_tool.py
PORT=${DEMO_KAFKA_PORT:-19092}
CONTROLLER_PORT=${DEMO_KAFKA_CONTROLLER_PORT:-19093}
ADMIN=127.0.0.1:${DEMO_ADMIN_PORT:-19464}
REGISTRY_PORT=${DEMO_REGISTRY_PORT:-19081}
REGISTRY=http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7
B=127.0.0.1:$PORT
DATA=$(mktemp -d)
cleanup() { kill "${SLUICE_PID:-}" "${BROKER_PID:-}" "${REGISTRY_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

echo "== starting Apache Kafka ${KAFKA_VERSION:-4.1.1} (KRaft) on $B, data and log in $DATA"
started=$(date +%s%N)
scripts/kafka-broker.sh "$DATA" "$PORT" "$CONTROLLER_PORT" & BROKER_PID=$!
for _ in $(seq 600); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  kill -0 $BROKER_PID 2>/dev/null || { echo "error: the broker exited: see $DATA/broker.log"; tail -20 "$DATA/broker.log"; exit 1; }
  sleep 0.1
done
echo "   listening after $(( ($(date +%s%N) - started) / 1000000 )) ms (format and start)"
for t in bookings bookings-enriched bookings-filtered bookings-avro bookings-enriched-avro; do "$PY" $TOOL create --broker $B --topic $t --partitions 3; done
"$PY" $TOOL produce-file --broker $B --topic bookings --file plugins/filter-and-enrich/bookings.jsonl --key-field booking_id

echo "== target/debug/sluice run -f plugins/filter-and-enrich/pipeline-kafka.yaml --admin $ADMIN"
KAFKA_BOOTSTRAP=$B target/debug/sluice --log-format human run -f plugins/filter-and-enrich/pipeline-kafka.yaml \
  --admin $ADMIN & SLUICE_PID=$!
for _ in $(seq 120); do
  # (confluent-kafka's admin client now and then dies without a word right after a broker
  # starts: a question that gets no answer is asked again.)
  sum=$("$PY" $TOOL committed --broker $B --topic bookings --group bookings-enrich 2>/dev/null \
        | "$PY" -c 'import json,sys; print(sum(max(v,0) for v in json.load(sys.stdin).values()))' 2>/dev/null) || sum=""
  [ "$sum" = 8 ] && break
  sleep 0.5
done
sleep 1.5 # one lag report from librdkafka's statistics
echo "== all 8 input offsets committed: target/debug/sluice status --admin $ADMIN"
target/debug/sluice status --admin $ADMIN
echo "== a few of its metrics (curl http://$ADMIN/metrics)"
"$PY" -c 'import sys, urllib.request; print("\n".join(l for l in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines() if l.startswith(("sluice_records_emitted_total", "sluice_consumer_lag", "sluice_dead_letters_total", "sluice_ready"))))' "http://$ADMIN/metrics"
echo "== stopping sluice with SIGTERM"
kill -TERM $SLUICE_PID; wait $SLUICE_PID; SLUICE_PID=
echo "== topic bookings-enriched (read with confluent-kafka)"
"$PY" $TOOL consume --broker $B --topic bookings-enriched --expect 4 --linger 0.5 \
  | "$PY" -c 'import json,sys; [print(json.loads(l)["value"]) for l in sys.stdin]'
echo "== topic bookings-filtered"
"$PY" $TOOL consume --broker $B --topic bookings-filtered --expect 3 --linger 0.5 \
  | "$PY" -c 'import json,sys; [print(json.loads(l)["value"]) for l in sys.stdin]'

echo
echo "== starting Apicurio Registry ${APICURIO_VERSION:-3.3.3} (in memory) on 127.0.0.1:$REGISTRY_PORT: its Confluent-compatible API is $REGISTRY"
started=$(date +%s%N)
scripts/schema-registry.sh "$REGISTRY_PORT" $((REGISTRY_PORT + 1)) >"$DATA/registry.log" 2>&1 & REGISTRY_PID=$!
for _ in $(seq 600); do
  "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/subjects", timeout=1)' "$REGISTRY" 2>/dev/null && break
  kill -0 $REGISTRY_PID 2>/dev/null || { echo "error: the registry exited: see $DATA/registry.log"; tail -20 "$DATA/registry.log"; exit 1; }
  sleep 0.2
done
echo "   answering after $(( ($(date +%s%N) - started) / 1000000 )) ms"
echo "== the bookings as Avro (plugins/filter-and-enrich/schemas/booking.avsc), written by confluent-kafka's AvroSerializer"
"$PY" tests/tools/registry_tool.py produce --broker $B --registry "$REGISTRY" --topic bookings-avro --format avro \
  --schema plugins/filter-and-enrich/schemas/booking.avsc --records plugins/filter-and-enrich/bookings.jsonl
echo "== target/debug/sluice run -f plugins/filter-and-enrich/pipeline-avro.yaml (format: avro in, the enriched output encoded as Avro)"
KAFKA_BOOTSTRAP=$B SCHEMA_REGISTRY_URL=$REGISTRY target/debug/sluice --log-format human run -f plugins/filter-and-enrich/pipeline-avro.yaml & SLUICE_PID=$!
for _ in $(seq 120); do
  sum=$("$PY" $TOOL committed --broker $B --topic bookings-avro --group bookings-enrich-avro 2>/dev/null \
        | "$PY" -c 'import json,sys; print(sum(max(v,0) for v in json.load(sys.stdin).values()))' 2>/dev/null) || sum=""
  [ "$sum" = 8 ] && break
  sleep 0.5
done
echo "== all 8 input offsets committed: stopping sluice with SIGTERM"
kill -TERM $SLUICE_PID; wait $SLUICE_PID; SLUICE_PID=
echo "== topic bookings-enriched-avro, read with confluent-kafka's AvroDeserializer (schema id, record)"
"$PY" tests/tools/registry_tool.py consume --broker $B --registry "$REGISTRY" --topic bookings-enriched-avro --format avro --expect 4 \
  | "$PY" -c 'import json,sys; [print(r["schema_id"], json.dumps(r["value"])) for r in map(json.loads, sys.stdin)]'
