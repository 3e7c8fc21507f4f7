"""Drives wharfd's Kafka listener with kafka-python.

    kafka_python_roundtrip.py BOOTSTRAP TOPIC COUNT

Produces COUNT records to TOPIC (auto-created), reads them back with an assigned consumer,
and asks for the earliest and latest offsets and for the offset of the 50th record's
timestamp. Prints one JSON document.
"""

import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
timestamps = []
for i in range(count):
    metadata = producer.send(topic, key=b"k", value=f"v{i}".encode()).get(timeout=30)
    timestamps.append(metadata.timestamp)
    if i == 49:
        time.sleep(0.02)
producer.flush()

consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
partition = TopicPartition(topic, 0)
consumer.assign([partition])
consumer.seek_to_beginning(partition)
read = []
deadline = time.time() + 30
while len(read) < count and time.time() < deadline:
    for records in consumer.poll(timeout_ms=1000).values():
        read.extend(record.value.decode() for record in records)
earliest = consumer.beginning_offsets([partition])[partition]
latest = consumer.end_offsets([partition])[partition]
found = consumer.offsets_for_times({partition: timestamps[49]})[partition]
consumer.close()

producer.close(timeout=5)

print(
    json.dumps(
        {
            "sent": len(timestamps),
            "read": read,
            "earliest": earliest,
            "latest": latest,
            "by_time": None if found is None else found.offset,
        }
    )
)
