#!/usr/bin/env python3
"""The independent reference client for Sluice's tests and demo: confluent-kafka (librdkafka).

  kafka_tool.py produce  --broker B --topic T --count N [--keys K] [--start S] [--size BYTES] [--headers] [--tombstone]
  kafka_tool.py produce-file --broker B --topic T --file F [--key-field FIELD] [--headers]
  kafka_tool.py consume  --broker B --topic T [--expect N] [--timeout S] [--to-end]
  kafka_tool.py create   --broker B --topic T --partitions P [--replication R] [--config K=V ...]
  kafka_tool.py committed --broker B --topic T --group G
  kafka_tool.py leaders  --broker B --topic T   (partition -> leader node id, and each one's ISR)
  kafka_tool.py acl --broker B --topic {add,remove} --principal P --resource-type TYPE --name N --pattern PATTERN --operation OP
  kafka_tool.py delete-topic --broker B --topic T
  kafka_tool.py scram --broker B --topic USER --password P   (sets USER's SCRAM-SHA-512 and -256 password)

`acl` adds or removes one allow binding for P on any host (the harness's super user does it);
TYPE, PATTERN and OP are Kafka's names (TOPIC, LITERAL, READ), as `sluice acls --format json`
prints them.

`produce` writes N events; event i has key "k{i % K}" and value {"seq": i, "key": ...}, so a
consumer can check per-key order; with --headers it also carries the header trace=t{i}; with
--tombstone the value is null instead (a delete for keyed sinks).
`consume` prints one JSON object per record (topic, partition, offset, timestamp, key, value,
headers)
read from the beginning with a throwaway group, and
stops after --expect records (plus --linger seconds, to catch extra ones) or --timeout seconds
of silence counted from the partition assignment.
"""
import argparse
import json
import os
import sys
import time
import uuid

from confluent_kafka import (ConsumerGroupTopicPartitions, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic


def produce(args):
    p = Producer({"bootstrap.servers": args.broker, "enable.idempotence": True, "linger.ms": 5})
    failures = []

    def report(err, _msg):
        if err is not None:
            failures.append(str(err))

    pad = "x" * args.size
    for i in range(args.start, args.start + args.count):
        key = f"k{i % args.keys}"
        value = json.dumps({"seq": i, "key": key, "pad": pad} if args.size else {"seq": i, "key": key})
        while True:
            try:
                headers = [("trace", f"t{i}".encode())] if args.headers else None
                p.produce(args.topic, key=key, value=None if args.tombstone else value,
                          headers=headers, on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    remaining = p.flush(60)
    if failures or remaining:
        sys.exit(f"produce failed: {failures[:3]} ({remaining} undelivered)")
    print(f"produced {args.count} events to {args.topic}", file=sys.stderr)


def produce_file(args):
    p = Producer({"bootstrap.servers": args.broker, "enable.idempotence": True})
    count = 0
    with open(args.file) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            key = None
            if args.key_field:
                key = str(json.loads(line).get(args.key_field, "")) or None
            headers = [("line", str(count).encode())] if args.headers else None
            while True:
                try:
                    p.produce(args.topic, key=key, value=line, headers=headers)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    p.poll(0.05)
            p.poll(0)
            count += 1
    if p.flush(60):
        sys.exit("produce-file: not all records were delivered")
    print(f"produced {count} events from {args.file} to {args.topic}", file=sys.stderr)


def consume(args):
    c = Consumer({
        "bootstrap.servers": args.broker,
        "group.id": f"reference-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    state = {"assigned": False, "end": None}

    def on_assign(consumer, partitions):
        state["assigned"] = True
        if args.to_end:
            # What the topic holds now: read exactly that far.
            def high(p):
                return consumer.get_watermark_offsets(p, timeout=30)[1]
            state["end"] = {p.partition: high(p) for p in partitions}

    c.subscribe([args.topic], on_assign=on_assign)
    seen, last, started = 0, time.time(), time.time()
    position = {}
    try:
        while True:
            if not state["assigned"]:
                # The silence timeout starts once the group has assigned the partitions.
                if time.time() - started > 60:
                    sys.exit("consume: no partition assignment within 60 s")
                last = time.time()
            if state["end"] is not None:
                if all(position.get(p, 0) >= end for p, end in state["end"].items()):
                    break
                if time.time() - last > 60:
                    sys.exit(f"consume: stuck before the end of {args.topic}: at {position}, end {state['end']}")
            elif args.expect is not None and seen >= args.expect:
                # Linger briefly: anything beyond --expect is a duplicate the caller wants to see.
                if time.time() - last > args.linger:
                    break
            elif time.time() - last > args.timeout:
                break
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                print(f"consumer error: {msg.error()}", file=sys.stderr)
                continue
            seen += 1
            last = time.time()
            position[msg.partition()] = msg.offset() + 1
            print(json.dumps({
                "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                "timestamp": msg.timestamp()[1],
                "key": msg.key().decode() if msg.key() is not None else None,
                "value": msg.value().decode() if msg.value() is not None else None,
                "headers": {k: v.decode() for k, v in (msg.headers() or [])},
            }), flush=True)
    finally:
        c.close()


def create(args):
    admin = AdminClient({"bootstrap.servers": args.broker})
    config = dict(kv.split("=", 1) for kv in args.config)
    futures = admin.create_topics([NewTopic(args.topic, num_partitions=args.partitions,
                                            replication_factor=args.replication, config=config)])
    for f in futures.values():
        f.result(30)


def delete_topic(args):
    admin = AdminClient({"bootstrap.servers": args.broker})
    for f in admin.delete_topics([args.topic]).values():
        f.result(30)
    # Deletion completes in the background: return once the metadata no longer lists it.
    deadline = time.monotonic() + 30
    while args.topic in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)


def group_offsets(args):
    """The topic's partitions and the group's committed offset of each, through the admin API
    (a Consumer with the group's id would disturb the group it inspects)."""
    admin = AdminClient({"bootstrap.servers": args.broker})
    md = admin.list_topics(args.topic, timeout=10)
    parts = [TopicPartition(args.topic, p) for p in md.topics[args.topic].partitions]
    request = [ConsumerGroupTopicPartitions(args.group, parts)]
    # A fresh broker creates and loads its offsets topic on first use: ask again meanwhile.
    deadline = time.monotonic() + 30
    while True:
        try:
            result = admin.list_consumer_group_offsets(request)[args.group].result(30)
            break
        except KafkaException as e:
            loading = e.args[0].code() in (KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                           KafkaError.COORDINATOR_NOT_AVAILABLE,
                                           KafkaError.NOT_COORDINATOR)
            if not (loading or e.args[0].retriable()) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return parts, {tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == args.topic}


def acl(args):
    from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                       ResourcePatternType, ResourceType)
    admin = AdminClient({"bootstrap.servers": args.broker})
    fields = (ResourceType[args.resource_type], args.name, ResourcePatternType[args.pattern],
              args.principal, "*", AclOperation[args.operation], AclPermissionType.ALLOW)
    if args.topic == "add":
        futures = admin.create_acls([AclBinding(*fields)])
    else:
        futures = admin.delete_acls([AclBindingFilter(*fields)])
    for f in futures.values():
        result = f.result(30)
        if args.topic == "remove" and not result:
            sys.exit(f"acl remove: no binding matched {fields}")


def scram(args):
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion
    admin = AdminClient({"bootstrap.servers": args.broker})
    # One alteration per user and request.
    for m in (ScramMechanism.SCRAM_SHA_512, ScramMechanism.SCRAM_SHA_256):
        upsert = UserScramCredentialUpsertion(args.topic, ScramCredentialInfo(m, 4096), args.password.encode())
        for f in admin.alter_user_scram_credentials([upsert]).values():
            f.result(30)


def leaders(args):
    md = AdminClient({"bootstrap.servers": args.broker}).list_topics(args.topic, timeout=10)
    print(json.dumps({str(p): {"leader": m.leader, "isr": sorted(m.isrs)}
                      for p, m in md.topics[args.topic].partitions.items()}))


def committed(args):
    _, offsets = group_offsets(args)
    print(json.dumps({str(p): o for p, o in offsets.items()}))


def lag(args):
    # What a monitoring tool reports: the high watermark (asked of the broker) minus the group's
    # committed offset.
    parts, committed = group_offsets(args)
    c = Consumer({"bootstrap.servers": args.broker, "group.id": f"lag-probe-{os.getpid()}"})
    out = {}
    for tp in parts:
        low, high = c.get_watermark_offsets(tp, timeout=10, cached=False)
        done = committed.get(tp.partition, -1)
        out[str(tp.partition)] = {"high": high, "committed": done, "lag": high - (done if done >= 0 else low)}
    c.close()
    print(json.dumps(out))


def offsets_for_times(args):
    """The broker's own answer (its time index) for the first offset at or after --time-ms in
    each partition: what `start-from: <time>` must start at. -1: no such offset (the end)."""
    admin = AdminClient({"bootstrap.servers": args.broker})
    md = admin.list_topics(args.topic, timeout=10)
    parts = [TopicPartition(args.topic, p, args.time_ms) for p in md.topics[args.topic].partitions]
    c = Consumer({"bootstrap.servers": args.broker, "group.id": f"time-probe-{os.getpid()}"})
    found = c.offsets_for_times(parts, timeout=10)
    c.close()
    print(json.dumps({str(tp.partition): tp.offset for tp in found}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("produce", "produce-file", "consume", "create", "committed", "lag", "offsets-for-times",
                 "leaders", "acl", "scram", "delete-topic"):
        s = sub.add_parser(name)
        s.add_argument("--broker", required=True)
        s.add_argument("--topic", required=True)
        if name == "produce":
            s.add_argument("--count", type=int, required=True)
            s.add_argument("--keys", type=int, default=16)
            s.add_argument("--start", type=int, default=0)
            s.add_argument("--size", type=int, default=0, help="padding bytes per event")
            s.add_argument("--headers", action="store_true", help="add the header trace=t{i}")
            s.add_argument("--tombstone", action="store_true", help="null values")
        if name == "produce-file":
            s.add_argument("--file", required=True)
            s.add_argument("--key-field")
            s.add_argument("--headers", action="store_true", help="add the header line=N (0-based)")
        if name == "consume":
            s.add_argument("--expect", type=int)
            s.add_argument("--timeout", type=float, default=10.0)
            s.add_argument("--linger", type=float, default=1.0)
            s.add_argument("--to-end", action="store_true",
                           help="read up to the high watermarks taken at assignment, then stop")
        if name == "create":
            s.add_argument("--partitions", type=int, default=1)
            s.add_argument("--replication", type=int, default=1)
            s.add_argument("--config", action="append", default=[], help="a topic setting K=V")
        if name in ("committed", "lag"):
            s.add_argument("--group", required=True)
        if name == "offsets-for-times":
            s.add_argument("--time-ms", type=int, required=True)
        if name == "acl":
            for flag in ("--principal", "--resource-type", "--name", "--pattern", "--operation"):
                s.add_argument(flag, required=True)
        if name == "scram":
            s.add_argument("--password", required=True)
    args = ap.parse_args()
    commands = {"produce": produce, "produce-file": produce_file, "consume": consume, "create": create,
                "committed": committed, "lag": lag, "offsets-for-times": offsets_for_times,
                "leaders": leaders, "acl": acl, "scram": scram,
                "delete-topic": delete_topic}
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
