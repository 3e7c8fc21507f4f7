"""Drives wharfd's Kafka listener with confluent-kafka (librdkafka).

    confluent_roundtrip.py BOOTSTRAP TOPIC COMPRESSION COUNT

Creates TOPIC (3 partitions, retention.ms) with the admin client, produces COUNT keyed
records with an idempotent producer and the given compression codec, then reads every
partition back from the beginning with an assigned consumer. Prints one JSON document:
what was acknowledged and what was read, per partition, in order. Any client error exits 1.
"""

import json
import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, compression, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

admin = AdminClient({"bootstrap.servers": bootstrap})
futures = admin.create_topics(
    [NewTopic(topic, num_partitions=3, replication_factor=1, config={"retention.ms": "86400000"})]
)
futures[topic].result(timeout=30)
metadata = admin.list_topics(topic=topic, timeout=30)
partitions = sorted(metadata.topics[topic].partitions)

producer = Producer(
    {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": compression,
        "linger.ms": 5,
    }
)
acked = []
errors = []


def on_delivery(error, message):
    if error is not None:
        errors.append(str(error))
    else:
        acked.append([message.partition(), message.offset(), message.key().decode(), message.value().decode()])


for i in range(count):
    key = f"k{i % 7}"
    producer.produce(topic, key=key, value=f"{key}-{i}", on_delivery=on_delivery)
    producer.poll(0)
remaining = producer.flush(30)
if remaining or errors:
    print(json.dumps({"unflushed": remaining, "errors": errors}))
    sys.exit(1)

consumer = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": "unused-assign-only",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
)
ends = {}
for partition in partitions:
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
    ends[partition] = high
consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
read = []
wanted = sum(ends.values())
while len(read) < wanted:
    message = consumer.poll(10)
    if message is None:
        break
    if message.error():
        raise KafkaException(message.error())
    read.append([message.partition(), message.offset(), message.key().decode(), message.value().decode()])
consumer.close()
print(json.dumps({"partitions": partitions, "ends": ends, "acked": acked, "read": read}))
