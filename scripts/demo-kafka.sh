#!/usr/bin/env bash
# The Kafka half of `make demo`: a fresh Apache Kafka broker (KRaft, one node) on 127.0.0.1, the sample bookings produced
# with the reference client, the filter-and-enrich plugin run by `sluice run` until every input
# offset is committed (with its admin endpoint on, shown by `sluice status` and a few metrics),
# then the output topics read back. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
PY=$CACHE/venv/bin/python
TOOL=tests/tools/kafka_tool.py
PORT=${DEMO_KAFKA_PORT:-19092}
CONTROLLER_PORT=${DEMO_KAFKA_CONTROLLER_PORT:-19093}
ADMIN=127.0.0.1:${DEMO_ADMIN_PORT:-19464}
B=127.0.0.1:$PORT
DATA=$(mktemp -d)
cleanup() { kill "${SLUICE_PID:-}" "${BROKER_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"; }
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
for t in bookings bookings-enriched bookings-filtered; do "$PY" $TOOL create --broker $B --topic $t --partitions 3; done
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
