"""Drives a replicated partition of a three-node wharfd cluster with confluent-kafka
(librdkafka), issue #21.

    confluent_replicated.py create BOOTSTRAP TOPIC
    confluent_replicated.py produce BOOTSTRAP TOPIC START COUNT [PAUSE_MS]
    confluent_replicated.py consume BOOTSTRAP TOPIC COUNT
    confluent_replicated.py isr BOOTSTRAP TOPIC WANTED

create: makes TOPIC, one partition with the broker's default replication factor (none
asked for: Kafka's -1), and waits until BOOTSTRAP's metadata lists it with three replicas
(the default of a cluster of three); prints {"leader": id, "replicas": [ids]}.
produce: an idempotent acks=all producer writes values "vSTART" .. "v(START+COUNT-1)" in
order, PAUSE_MS (default 0) apart; it retries through a failover (message.timeout.ms 60 s);
prints {"acked": [[offset, value], ...], "failed": [errors]} in delivery order.
consume: reads the partition from the earliest offset until COUNT records or 60 s; prints
{"read": [[offset, value], ...], "epochs": [leader epoch of each record], "leader": id}.
isr: asks BOOTSTRAP's Metadata until partition 0's in-sync replicas are WANTED (node ids
joined by commas) or 45 s passed; prints {"isrs": [ids], "replicas": [ids], "leader": id}
as last seen (the caller compares).
"""

import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic


def metadata(bootstrap, topic):
    return AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic=topic, timeout=30)


def create(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # No replication_factor: the cluster's default (3 from three nodes on) is what is tested.
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(timeout=30)
    deadline = time.time() + 30
    while True:
        described = metadata(bootstrap, topic).topics.get(topic)
        if described is not None and described.error is None and len(described.partitions) == 1:
            partition = described.partitions[0]
            if len(partition.replicas) == 3 and partition.leader >= 0:
                return {"leader": partition.leader, "replicas": sorted(partition.replicas)}
        if time.time() > deadline:
            raise SystemExit(f"{topic} not placed on three replicas in time")
        time.sleep(0.2)


def produce(bootstrap, topic, start, count, pause_ms=0):
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 60000,
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    acked, failed = [], []

    def delivered(error, message):
        if error is not None:
            failed.append(str(error))
        else:
            acked.append([message.offset(), message.value().decode()])

    for index in range(start, start + count):
        producer.produce(topic, value=f"v{index}".encode(), partition=0, on_delivery=delivered)
        producer.poll(0)
        if pause_ms:
            time.sleep(pause_ms / 1000.0)
    left = producer.flush(90)
    if left:
        failed.append(f"{left} records not delivered")
    return {"acked": acked, "failed": failed}


def consume(bootstrap, topic, count):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"replicated-reader-{time.time()}",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    read = []
    epochs = []
    deadline = time.time() + 60
    while len(read) < count and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        read.append([message.offset(), message.value().decode()])
        # The partition leader epoch of the record's batch (None: the batch carries -1).
        epochs.append(message.leader_epoch())
    consumer.close()
    leader = metadata(bootstrap, topic).topics[topic].partitions[0].leader
    return {"read": read, "epochs": epochs, "leader": leader}


def isr(bootstrap, topic, wanted):
    deadline = time.time() + 45
    seen = {}
    while True:
        described = metadata(bootstrap, topic).topics.get(topic)
        if described is not None and described.error is None and described.partitions:
            partition = described.partitions[0]
            seen = {
                "isrs": sorted(partition.isrs),
                "replicas": sorted(partition.replicas),
                "leader": partition.leader,
            }
            if seen["isrs"] == wanted:
                return seen
        if time.time() > deadline:
            return seen
        time.sleep(0.3)


def main():
    mode, bootstrap, topic = sys.argv[1:4]
    if mode == "create":
        result = create(bootstrap, topic)
    elif mode == "produce":
        pause_ms = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        result = produce(bootstrap, topic, int(sys.argv[4]), int(sys.argv[5]), pause_ms)
    elif mode == "consume":
        result = consume(bootstrap, topic, int(sys.argv[4]))
    elif mode == "isr":
        result = isr(bootstrap, topic, sorted(int(node) for node in sys.argv[4].split(",")))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


main()
