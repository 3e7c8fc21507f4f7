"""An idempotent confluent-kafka producer (acks=all) streaming while the test kills and
restarts the broker.

    confluent_idempotent_stream.py BOOTSTRAP TOPIC SECONDS

Creates TOPIC (4 partitions), then produces `seq-N` with key `kN%8` for SECONDS, flushes
(librdkafka retries through the outage; idempotence makes retries safe) and prints one JSON
document: every acknowledged record as [partition, offset, value], and every error.
"""

import json
import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(30)
print("ready", flush=True)

producer = Producer(
    {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "message.timeout.ms": 60000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
    }
)
acked = []
errors = []


def on_delivery(error, message):
    if error is not None:
        errors.append(str(error))
    else:
        acked.append([message.partition(), message.offset(), message.value().decode()])


sequence = 0
deadline = time.time() + seconds
while time.time() < deadline:
    try:
        producer.produce(topic, key=f"k{sequence % 8}", value=f"seq-{sequence}", on_delivery=on_delivery)
        sequence += 1
    except BufferError:
        producer.poll(0.05)
        continue
    producer.poll(0)
    if sequence % 50 == 0:
        time.sleep(0.005)
left = producer.flush(90)
print(json.dumps({"sent": sequence, "unflushed": left, "acked": acked, "errors": errors[:20]}))
