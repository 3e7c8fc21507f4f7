"""Transactions with confluent-kafka against wharfd's Kafka listener.

    confluent_transactions.py BOOTSTRAP COUNT [REPLICATION_FACTOR [PARTITIONS]]

A read-process-write loop: COUNT records in topic `tx-in` are consumed by group `tx-group`
(read_committed, no auto commit) and written, upper-cased, to `tx-out` in transactions that
also commit the consumed offsets; every third transaction is aborted and its input read
again. Then `tx-out` is read with read_committed and with read_uncommitted, and a second
producer with the same transactional id fences the first (a zombie). Both topics have
PARTITIONS partitions (2) of REPLICATION_FACTOR replicas (1). Prints one JSON document.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, count = sys.argv[1], int(sys.argv[2])
# In a cluster: replicated topics whose partitions several nodes lead.
factor = int(sys.argv[3]) if len(sys.argv) > 3 else 1
partitions = int(sys.argv[4]) if len(sys.argv) > 4 else 2

admin = AdminClient({"bootstrap.servers": bootstrap})
for future in admin.create_topics(
    [
        NewTopic("tx-in", num_partitions=partitions, replication_factor=factor),
        NewTopic("tx-out", num_partitions=partitions, replication_factor=factor),
    ]
).values():
    future.result(30)

plain = Producer({"bootstrap.servers": bootstrap})
for i in range(count):
    plain.produce("tx-in", key=f"k{i}", value=f"record-{i}")
assert plain.flush(30) == 0

consumer = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": "tx-group",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    }
)
consumer.subscribe(["tx-in"])
producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "tx-app"})
producer.init_transactions(30)

transactions = 0
aborted = 0
committed_inputs = set()
deadline = time.time() + 90
while len(committed_inputs) < count and time.time() < deadline:
    batch = consumer.consume(num_messages=10, timeout=1)
    batch = [message for message in batch if not message.error()]
    if not batch:
        continue
    producer.begin_transaction()
    for message in batch:
        producer.produce("tx-out", key=message.key(), value=message.value().upper())
    producer.send_offsets_to_transaction(
        consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
    )
    transactions += 1
    # Send the records before deciding, so an aborted transaction's records are in the log
    # (librdkafka drops unsent ones on abort).
    producer.flush(30)
    if transactions % 3 == 0:
        producer.abort_transaction(30)
        aborted += 1
        # Read the aborted input again: back to the committed offsets.
        for partition in consumer.committed(consumer.assignment(), timeout=30):
            consumer.seek(TopicPartition(partition.topic, partition.partition, max(partition.offset, 0)))
    else:
        producer.commit_transaction(30)
        committed_inputs.update(message.value().decode() for message in batch)
consumer.close()


def read_all(isolation):
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{isolation}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": isolation,
        }
    )
    reader.assign([TopicPartition("tx-out", partition, 0) for partition in range(partitions)])
    values = []
    idle_since = time.time()
    while time.time() - idle_since < 3:
        message = reader.poll(0.5)
        if message is None or message.error():
            continue
        values.append(message.value().decode())
        idle_since = time.time()
    reader.close()
    return values


committed_view = read_all("read_committed")
uncommitted_view = read_all("read_uncommitted")

# An open transaction: read_committed's latest offset (the last stable offset) stays below
# it, read_uncommitted's (the high watermark) is past it.
producer.begin_transaction()
producer.produce("tx-out", value=b"open", partition=0)
producer.flush(30)
ends = {}
for isolation in ("read_committed", "read_uncommitted"):
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{isolation}", "isolation.level": isolation})
    ends[isolation] = probe.get_watermark_offsets(TopicPartition("tx-out", 0), timeout=30)[1]
    probe.close()
producer.abort_transaction(30)

# A zombie: a second producer with the same transactional id fences the first.
zombie_error = None
successor = Producer({"bootstrap.servers": bootstrap, "transactional.id": "tx-app"})
successor.init_transactions(30)
try:
    producer.begin_transaction()
    producer.produce("tx-out", value=b"zombie")
    producer.commit_transaction(30)
except KafkaException as error:
    zombie_error = error.args[0].name()
successor.begin_transaction()
successor.produce("tx-out", value=b"successor")
successor.commit_transaction(30)

print(
    json.dumps(
        {
            "transactions": transactions,
            "aborted": aborted,
            "committed_inputs": len(committed_inputs),
            "committed_view": committed_view,
            "uncommitted_count": len(uncommitted_view),
            "zombie_error": zombie_error,
            "open_transaction_ends": ends,
            "after_fencing": read_all("read_committed"),
        }
    )
)
