"""A compacted topic through wharfd's Kafka listener with confluent-kafka (librdkafka).

    confluent_compacted.py BOOTSTRAP TOPIC produce COUNT KEYS COMPRESSION [REPLICATION]
    confluent_compacted.py BOOTSTRAP TOPIC read

produce: creates TOPIC (one partition, cleanup.policy=compact, 64 KiB segments, dirty
ratio 0.01, replication factor REPLICATION, 1 by default) with the admin client and produces COUNT records over KEYS keys with an
idempotent producer, every tenth key deleted by a tombstone (a null value) at the end, then
tries one record without a key. Prints {"latest": {key: value or null}, "described":
{config: value}, "keyless": [the keyless record's error name]}.

read: reads the partition from the beginning with an assigned consumer to the end offset.
Prints [[offset, key, value or null], ...]. Any client error exits 1.
"""

import json
import os
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

bootstrap, topic, mode = sys.argv[1], sys.argv[2], sys.argv[3]

if mode == "produce":
    count, keys, compression = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    replication = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    admin = AdminClient({"bootstrap.servers": bootstrap})
    configs = {
        "cleanup.policy": "compact",
        "segment.bytes": "65536",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "86400000",
    }
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=replication, config=configs)])
    futures[topic].result(timeout=30)
    resource = ConfigResource("topic", topic)
    described = admin.describe_configs([resource])[resource].result(timeout=30)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": compression,
            "linger.ms": 5,
            # Batches of Kafka's Java default size (librdkafka's is 1 MB), so the topic's
            # 64 KiB segments roll many times.
            "batch.size": 16384,
        }
    )
    errors = []

    def on_delivery(error, _message):
        if error is not None:
            errors.append(str(error))

    latest = {}
    for i in range(count):
        key = f"key-{i % keys}"
        # Random text, so that compressed batches still fill several segments.
        value = f"{key}-v{i}-" + os.urandom(100).hex()
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        latest[key] = value
        producer.poll(0)
    for k in range(0, keys, 10):
        key = f"key-{k}"
        producer.produce(topic, key=key, value=None, on_delivery=on_delivery)
        latest[key] = None
    remaining = producer.flush(30)
    if remaining or errors:
        print(json.dumps({"unflushed": remaining, "errors": errors}))
        sys.exit(1)
    # A record without a key is refused on a compacted topic, as Kafka does.
    keyless = []
    plain = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0})
    plain.produce(topic, value=b"no key", on_delivery=lambda error, _m: keyless.append(error and error.name()))
    plain.flush(30)
    print(
        json.dumps(
            {
                "latest": latest,
                "described": {name: entry.value for name, entry in described.items()},
                "keyless": keyless,
            }
        )
    )
elif mode == "read":
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "compacted-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    _, end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    consumer.assign([TopicPartition(topic, 0, 0)])
    rows = []
    position = 0
    idle = 0
    while position < end and idle < 50:
        message = consumer.poll(0.2)
        if message is None:
            idle += 1
            continue
        if message.error():
            print(json.dumps({"error": str(message.error())}))
            sys.exit(1)
        value = message.value()
        rows.append([message.offset(), message.key().decode(), None if value is None else value.decode()])
        position = message.offset() + 1
    consumer.close()
    print(json.dumps(rows))
else:
    sys.exit(f"unknown mode {mode}")
