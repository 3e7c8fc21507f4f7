"""Drives a three-node wharfd cluster with confluent-kafka (librdkafka), issue #20.

    confluent_cluster.py ADMIN_BOOTSTRAP PRODUCER_BOOTSTRAP CONSUMER_BOOTSTRAP TOPIC COUNT

Creates TOPIC (3 partitions) through the node at ADMIN_BOOTSTRAP, then reads the cluster's
metadata as librdkafka sees it (brokers, each partition's leader). Produces COUNT records
with an idempotent acks=all producer bootstrapped on PRODUCER_BOOTSTRAP, record i to
partition i % 3, so every partition (and so every leader) gets records; librdkafka must
route each batch to its partition's leader itself. Then a consumer group member
bootstrapped on CONSUMER_BOOTSTRAP reads everything back and commits; a second member of
the same group, started after the first closed, must find nothing left (the committed
offsets are at the coordinator FindCoordinator names).

Prints one JSON document: brokers, DescribeCluster's nodes, controller and cluster id
(asked of CONSUMER_BOOTSTRAP), leaders, what was acknowledged and what was read. Any client
error exits 1.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

admin_bootstrap, producer_bootstrap, consumer_bootstrap, topic, count = sys.argv[1:6]
count = int(count)

admin = AdminClient({"bootstrap.servers": admin_bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=30)

# Every node learns the topic, and every node's Kafka address, from the metadata log
# within a heartbeat or two.
deadline = time.time() + 30
while True:
    metadata = AdminClient({"bootstrap.servers": producer_bootstrap}).list_topics(topic=topic, timeout=30)
    described = metadata.topics.get(topic)
    placed = described is not None and described.error is None and len(described.partitions) == 3
    if placed and len(metadata.brokers) == 3:
        break
    if time.time() > deadline:
        print(json.dumps({"error": f"{topic} not in the metadata of {producer_bootstrap}"}))
        sys.exit(1)
    time.sleep(0.2)
brokers = sorted([broker.id, f"{broker.host}:{broker.port}"] for broker in metadata.brokers.values())
# DescribeCluster through the consumer's node: every node and the controller.
# (The client is kept in a variable: a collected AdminClient fails its pending futures.)
cluster_admin = AdminClient({"bootstrap.servers": consumer_bootstrap})
described_cluster = cluster_admin.describe_cluster().result(timeout=30)
cluster = {
    "nodes": sorted(node.id for node in described_cluster.nodes),
    "controller": described_cluster.controller.id if described_cluster.controller else None,
    "cluster_id": described_cluster.cluster_id,
}
leaders = {str(index): partition.leader for index, partition in described.partitions.items()}

producer = Producer(
    {
        "bootstrap.servers": producer_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    }
)
acked = []
errors = []


def on_delivery(error, message):
    if error is not None:
        errors.append(str(error))
    else:
        acked.append([message.partition(), message.offset(), message.value().decode()])


for i in range(count):
    producer.produce(topic, value=f"v{i}", partition=i % 3, on_delivery=on_delivery)
    producer.poll(0)
remaining = producer.flush(60)
if remaining or errors:
    print(json.dumps({"unflushed": remaining, "errors": errors}))
    sys.exit(1)


def member():
    return Consumer(
        {
            "bootstrap.servers": consumer_bootstrap,
            "group.id": f"{topic}-readers",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )


consumer = member()
consumer.subscribe([topic])
read = []
deadline = time.time() + 60
while len(read) < count and time.time() < deadline:
    message = consumer.poll(0.5)
    if message is None:
        continue
    if message.error():
        if message.error().code() == KafkaError._PARTITION_EOF:
            continue
        print(json.dumps({"consume_error": str(message.error())}))
        sys.exit(1)
    read.append([message.partition(), message.offset(), message.value().decode()])
consumer.commit(asynchronous=False)
consumer.close()

again = member()
again.subscribe([topic])
leftover = []
deadline = time.time() + 8
while time.time() < deadline:
    message = again.poll(0.5)
    if message is not None and not message.error():
        leftover.append([message.partition(), message.offset(), message.value().decode()])
again.close()

print(
    json.dumps(
        {
            "brokers": brokers,
            "cluster": cluster,
            "leaders": leaders,
            "acked": sorted(acked),
            "read": sorted(read),
            "leftover": leftover,
        }
    )
)
