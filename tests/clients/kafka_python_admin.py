"""Transaction, producer and group-offset admin with kafka-python's KafkaAdminClient (and a
confluent-kafka transactional producer) against wharfd's Kafka listener.

    kafka_python_admin.py BOOTSTRAP

Prints one JSON document with what DescribeTransactions, ListTransactions,
DescribeProducers and OffsetDelete answered.
"""

import json
import sys

from confluent_kafka import Consumer, Producer, TopicPartition as ConfluentPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaAdminClient
from kafka.structs import TopicPartition

bootstrap = sys.argv[1]
out = {}
creator = AdminClient({"bootstrap.servers": bootstrap})
creator.create_topics([NewTopic("kp-t", num_partitions=2)])["kp-t"].result(30)

producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "kp-tx"})
producer.init_transactions(30)
producer.begin_transaction()
producer.produce("kp-t", value=b"open", partition=0)
producer.flush(30)

admin = KafkaAdminClient(bootstrap_servers=bootstrap)
described = admin.describe_transactions(["kp-tx"])["kp-tx"]
out["described"] = {
    "state": described.state.value,
    "partitions": sorted([tp.topic, tp.partition] for tp in described.topic_partitions),
}
try:
    admin.describe_transactions(["nobody"])
    out["unknown"] = None
except Exception as error:  # the client raises the error class of the code
    out["unknown"] = type(error).__name__
out["listed_open"] = [
    [listing.transactional_id, listing.state.value]
    for listings in admin.list_transactions().values()
    for listing in listings
]
producers = admin.describe_producers([TopicPartition("kp-t", 0)])[TopicPartition("kp-t", 0)]
out["producers"] = [
    {"epoch": state.producer_epoch, "txn_start": state.current_transaction_start_offset}
    for state in producers.active_producers
]
producer.abort_transaction(30)
out["listed_after_abort"] = [
    [listing.transactional_id, listing.state.value]
    for listings in admin.list_transactions().values()
    for listing in listings
]

consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kp-g"})
consumer.commit(offsets=[ConfluentPartition("kp-t", 0, 1), ConfluentPartition("kp-t", 1, 0)], asynchronous=False)
consumer.close()
deleted = admin.delete_group_offsets("kp-g", [TopicPartition("kp-t", 0)])
out["offset_delete"] = {f"{tp.topic}-{tp.partition}": error.__name__ for tp, error in deleted.items()}
out["remaining"] = sorted(
    [tp.topic, tp.partition, meta.offset] for tp, meta in admin.list_group_offsets("kp-g")["kp-g"].items()
)
print(json.dumps(out), flush=True)
