#!/usr/bin/env python3
"""Another implementation of the Confluent wire format for Sluice's tests and demo:
confluent-kafka's serializers and SchemaRegistryClient (PyPI), against a real registry.

  registry_tool.py produce --broker B --registry URL --topic T --format F --schema FILE --records FILE
      [--message NAME] [--strategy topic|record|topic-record] [--ca FILE]
  registry_tool.py consume --broker B --registry URL --topic T --format F --expect N
      [--schema FILE] [--message NAME] [--timeout S] [--ca FILE]

F is avro, protobuf or json-schema. `produce` serializes each line of --records (a JSON object)
with the schema in --schema (registered under the subject the strategy names) and writes it
keyed by its line number. `consume` reads a topic from the beginning, deserializes each value
through the registry and prints one JSON object per record: {"offset", "key", "schema_id",
"value"}. --ca: the CA file of an https registry. Protobuf schemas are compiled with protoc from grpcio-tools; --message picks the
message (default: the file's first).
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import (SchemaRegistryClient, record_subject_name_strategy,
                                             topic_record_subject_name_strategy, topic_subject_name_strategy)
from confluent_kafka.serialization import MessageField, SerializationContext

STRATEGIES = {"topic": topic_subject_name_strategy, "record": record_subject_name_strategy,
              "topic-record": topic_record_subject_name_strategy}


def proto_message_class(schema_file, message):
    """The message class of --message (default: the first) in the .proto file, compiled with
    grpcio-tools' protoc into a Python module."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc
    import grpc_tools
    out = tempfile.mkdtemp()
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    src = os.path.dirname(os.path.abspath(schema_file))
    name = os.path.basename(schema_file)
    code = protoc.main(["protoc", f"-I{src}", f"-I{include}", f"--python_out={out}",
                        f"--descriptor_set_out={out}/set.pb", os.path.join(src, name)])
    if code != 0:
        sys.exit(f"protoc failed on {schema_file}")
    sys.path.insert(0, out)
    module = importlib.import_module(name[:-len(".proto")].replace("/", ".") + "_pb2")
    fds = descriptor_pb2.FileDescriptorSet()
    with open(f"{out}/set.pb", "rb") as f:
        fds.ParseFromString(f.read())
    names = [m.name for m in fds.file[-1].message_type]
    wanted = (message or names[0]).split(".")[-1]
    return getattr(module, wanted)


def registry_client(args):
    conf = {"url": args.registry}
    if args.ca:
        conf["ssl.ca.location"] = args.ca
    return SchemaRegistryClient(conf)


def serializer(args, client):
    conf = {"auto.register.schemas": True, "subject.name.strategy": STRATEGIES[args.strategy]}
    if args.format == "avro":
        from confluent_kafka.schema_registry.avro import AvroSerializer
        return AvroSerializer(client, open(args.schema).read(), conf=conf), lambda r: r
    if args.format == "json-schema":
        from confluent_kafka.schema_registry.json_schema import JSONSerializer
        return JSONSerializer(open(args.schema).read(), client, conf=conf), lambda r: r
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from google.protobuf import json_format
    cls = proto_message_class(args.schema, args.message)
    return (ProtobufSerializer(cls, client, conf=conf),
            lambda r: json_format.ParseDict(r, cls(), ignore_unknown_fields=False))


def deserializer(args, client):
    if args.format == "avro":
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        return AvroDeserializer(client), lambda v: v
    if args.format == "json-schema":
        from confluent_kafka.schema_registry.json_schema import JSONDeserializer
        schema = open(args.schema).read() if args.schema else None
        return JSONDeserializer(schema, schema_registry_client=client), lambda v: v
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
    from google.protobuf import json_format
    cls = proto_message_class(args.schema, args.message)
    return (ProtobufDeserializer(cls, {"use.deprecated.format": False}),
            lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True))


def produce(args):
    client = registry_client(args)
    ser, to_obj = serializer(args, client)
    p = Producer({"bootstrap.servers": args.broker, "enable.idempotence": True, "linger.ms": 5})
    failures = []
    count = 0
    with open(args.records) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            record = to_obj(json.loads(line))
            value = ser(record, SerializationContext(args.topic, MessageField.VALUE))
            p.produce(args.topic, key=str(i).encode(), value=value,
                      on_delivery=lambda err, _m: err and failures.append(str(err)))
            count += 1
            p.poll(0)
    if p.flush(60) or failures:
        sys.exit(f"produce failed: {failures[:3]}")
    print(f"produced {count} {args.format} records to {args.topic}", file=sys.stderr)


def consume(args):
    client = registry_client(args)
    de, to_json = deserializer(args, client)
    c = Consumer({"bootstrap.servers": args.broker, "group.id": f"registry-tool-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    c.subscribe([args.topic])
    seen = 0
    deadline = time.time() + args.timeout
    while seen < args.expect and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        raw = m.value()
        schema_id = int.from_bytes(raw[1:5], "big") if raw and len(raw) >= 5 else None
        value = de(raw, SerializationContext(args.topic, MessageField.VALUE))
        print(json.dumps({"offset": m.offset(), "key": m.key().decode() if m.key() else None,
                          "schema_id": schema_id, "value": to_json(value)}), flush=True)
        seen += 1
    c.close()
    if seen < args.expect:
        sys.exit(f"consumed {seen} of {args.expect} records of {args.topic}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("produce", "consume"):
        s = sub.add_parser(name)
        s.add_argument("--broker", required=True)
        s.add_argument("--registry", required=True)
        s.add_argument("--topic", required=True)
        s.add_argument("--format", required=True, choices=["avro", "protobuf", "json-schema"])
        s.add_argument("--schema")
        s.add_argument("--message")
        s.add_argument("--ca", help="CA file of an https registry")
        if name == "produce":
            s.add_argument("--records", required=True)
            s.add_argument("--strategy", default="topic", choices=sorted(STRATEGIES))
        else:
            s.add_argument("--expect", type=int, required=True)
            s.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args()
    {"produce": produce, "consume": consume}[args.cmd](args)


if __name__ == "__main__":
    main()
