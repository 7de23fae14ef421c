#!/usr/bin/env python3
"""An independent Confluent client for tests/interop.rs: Confluent's own Python client
(confluent-kafka, which bundles librdkafka) with its schema registry serdes, AvroSerializer and
AvroDeserializer (fastavro underneath), configured the standard way.

    produce --topic T --schema-file F --value-json J [--key K]
        Serializes the JSON object J with AvroSerializer, registering the schema text of F
        (auto.register.schemas) under the TopicRecordNameStrategy subject, produces it to T
        and prints {"schema_id", "partition", "offset"} as JSON.
        J is given as serde_json prints the generated Rust types: uuids as strings,
        timestamp-micros as integers, enums as symbol strings, unions as the plain value or null.
        These are values fastavro writes as they are, so nothing is converted.

    consume --topic T --partition P --offset O [--timeout S]
        Reads the one record at T[P]@O, deserializes it with AvroDeserializer (which fetches the
        writer schema by the id in the record) and prints the value as JSON, keys sorted.

fastavro applies the logical types when it reads: uuid -> uuid.UUID, timestamp-micros and
timestamp-millis -> datetime, date -> datetime.date. The JSON output turns these back into the
values the Avro binary encoding carries (canonical uuid text, integer microseconds or
milliseconds since the epoch, integer days since 1970-01-01), guided by the writer schema, so
the output is exact and compares with serde_json's form of the Rust types. bytes and fixed are
printed as Avro's JSON encoding prints them (one char per byte, ISO-8859-1).

Addresses come from the same environment variables as the app:
DIETSTREAM_SCHEMA_REGISTRY__URL, DIETSTREAM_KAFKA__BOOTSTRAP_SERVERS, and
DIETSTREAM_SCHEMA_REGISTRY__USERNAME / __PASSWORD for basic authentication. Defaults are the
app's: the local stack. Any failure exits non-zero with the reason on stderr.
"""

import argparse
import datetime
import json
import os
import sys
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema
from fastavro.schema import expand_schema

DEFAULT_REGISTRY_URL = "http://127.0.0.1:8081/apis/ccompat/v7"
DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
EPOCH_DAY = datetime.date(1970, 1, 1)


class Failure(Exception):
    """A failure to report on stderr."""


def registry_client():
    conf = {"url": os.environ.get("DIETSTREAM_SCHEMA_REGISTRY__URL", DEFAULT_REGISTRY_URL)}
    username = os.environ.get("DIETSTREAM_SCHEMA_REGISTRY__USERNAME")
    password = os.environ.get("DIETSTREAM_SCHEMA_REGISTRY__PASSWORD")
    if username is not None or password is not None:
        conf["basic.auth.user.info"] = f"{username or ''}:{password or ''}"
    if os.environ.get("DIETSTREAM_SCHEMA_REGISTRY__TOKEN"):
        raise Failure("DIETSTREAM_SCHEMA_REGISTRY__TOKEN is set: this client supports basic authentication only")
    return SchemaRegistryClient(conf)


def kafka_conf():
    return {"bootstrap.servers": os.environ.get("DIETSTREAM_KAFKA__BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP_SERVERS)}


def schema_id_of(data):
    if data is None or len(data) < 5 or data[0] != 0:
        raise Failure("the record is not in the Confluent wire format")
    return int.from_bytes(data[1:5], "big")


def produce(args):
    with open(args.schema_file, encoding="utf-8") as f:
        schema_text = f.read()
    try:
        value = json.loads(args.value_json)
    except json.JSONDecodeError as e:
        raise Failure(f"--value-json is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise Failure("--value-json must be a JSON object")

    serializer = AvroSerializer(
        registry_client(),
        schema_text,
        conf={
            "auto.register.schemas": True,
            "subject.name.strategy": topic_record_subject_name_strategy,
        },
    )
    data = serializer(value, SerializationContext(args.topic, MessageField.VALUE))

    delivered = {}

    def on_delivery(err, msg):
        delivered["error"] = err
        delivered["msg"] = msg

    producer = Producer({**kafka_conf(), "acks": "all", "enable.idempotence": True})
    producer.produce(args.topic, key=args.key, value=data, on_delivery=on_delivery)
    remaining = producer.flush(args.timeout)
    if remaining or "msg" not in delivered:
        raise Failure(f"the record was not delivered to {args.topic} within {args.timeout} s")
    if delivered["error"] is not None:
        raise Failure(f"delivery to {args.topic} failed: {delivered['error']}")
    msg = delivered["msg"]
    return {"schema_id": schema_id_of(data), "partition": msg.partition(), "offset": msg.offset()}


def consume(args):
    registry = registry_client()
    deserializer = AvroDeserializer(registry, conf={"subject.name.strategy": topic_record_subject_name_strategy})
    consumer = Consumer(
        {
            **kafka_conf(),
            "group.id": f"interop-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "error",
        }
    )
    try:
        consumer.assign([TopicPartition(args.topic, args.partition, args.offset)])
        msg = consumer.poll(args.timeout)
    finally:
        consumer.close()
    where = f"{args.topic}[{args.partition}]@{args.offset}"
    if msg is None:
        raise Failure(f"no record at {where} within {args.timeout} s")
    if msg.error() is not None:
        raise Failure(f"reading {where}: {msg.error()}")
    if msg.offset() != args.offset:
        raise Failure(f"asked for {where} but got offset {msg.offset()}")
    data = msg.value()
    value = deserializer(data, SerializationContext(args.topic, MessageField.VALUE))
    writer = registry.get_schema(schema_id_of(data))
    schema = expand_schema(parse_schema(json.loads(writer.schema_str)))
    return plain(schema, value, "value")


def plain(schema, value, path):
    """The value as JSON with the writer schema's logical types undone, exactly."""
    if isinstance(schema, list):
        for branch in schema:
            if matches(branch, value):
                return plain(branch, value, path)
        raise Failure(f"{path}: {value!r} matches no branch of the union")
    kind, logical = type_of(schema)
    if isinstance(kind, (dict, list)):
        return plain(kind, value, path)
    if kind == "record":
        return {f["name"]: plain(f["type"], value[f["name"]], f"{path}.{f['name']}") for f in schema["fields"]}
    if kind == "array":
        return [plain(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "map":
        return {k: plain(schema["values"], v, f"{path}[{k!r}]") for k, v in value.items()}
    if kind in ("bytes", "fixed"):
        return bytes(value).decode("latin-1")
    if logical == "uuid" and isinstance(value, uuid.UUID):
        return str(value)
    if logical == "timestamp-micros" and isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(microseconds=1)
    if logical == "timestamp-millis" and isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(milliseconds=1)
    if logical == "date" and isinstance(value, datetime.date):
        return (value - EPOCH_DAY).days
    if isinstance(value, (datetime.date, datetime.time, uuid.UUID)):
        raise Failure(f"{path}: no exact JSON form for {value!r} of logical type {logical}")
    return value


def type_of(schema):
    if isinstance(schema, str):
        return schema, None
    return schema["type"], schema.get("logicalType")


def matches(schema, value):
    """Whether the value read by fastavro belongs to this union branch."""
    kind, logical = type_of(schema)
    if isinstance(kind, (dict, list)):
        return matches(kind, value)
    if value is None:
        return kind == "null"
    if logical == "uuid" and isinstance(value, uuid.UUID):
        return True
    if logical in ("timestamp-micros", "timestamp-millis") and isinstance(value, datetime.datetime):
        return True
    if logical == "date" and isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return True
    checks = {
        "boolean": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, float),
        "double": lambda v: isinstance(v, float),
        "string": lambda v: isinstance(v, str),
        "bytes": lambda v: isinstance(v, bytes),
        "fixed": lambda v: isinstance(v, bytes) and len(v) == schema["size"],
        "enum": lambda v: isinstance(v, str) and v in schema["symbols"],
        "array": lambda v: isinstance(v, list),
        "map": lambda v: isinstance(v, dict),
        "record": lambda v: isinstance(v, dict) and set(v) == {f["name"] for f in schema["fields"]},
    }
    return kind in checks and checks[kind](value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("produce", help="serialize a JSON value with AvroSerializer and produce it")
    p.add_argument("--topic", required=True)
    p.add_argument("--schema-file", required=True)
    p.add_argument("--value-json", required=True)
    p.add_argument("--key")
    p.add_argument("--timeout", type=float, default=30.0)
    c = modes.add_parser("consume", help="read one record and deserialize it with AvroDeserializer")
    c.add_argument("--topic", required=True)
    c.add_argument("--partition", type=int, required=True)
    c.add_argument("--offset", type=int, required=True)
    c.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    try:
        result = produce(args) if args.mode == "produce" else consume(args)
        out = json.dumps(result, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except Exception as e:  # every failure, ours or the client's, ends here
        print(f"confluent_client {args.mode}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
