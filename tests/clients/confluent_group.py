"""Consumer-group membership churn with confluent-kafka against wharfd's Kafka listener.

    confluent_group.py BOOTSTRAP TOPIC GROUP COUNT [classic|consumer]

The last argument picks the group protocol: Kafka's classic one (client-side assignors,
the default) or KIP-848's (`group.protocol=consumer`: the broker assigns).

Creates TOPIC with 4 partitions and produces COUNT records over a few seconds while members
of GROUP come and go: a starts, b joins, c joins, a leaves, b leaves. Each member commits
every record synchronously before it counts it as processed (a commit the broker refuses,
as it must for a member fenced by a rebalance, leaves the record to its next owner). Prints
one JSON document: every processed record with the member that processed it. Nobody crashes,
so every record must be processed exactly once.
"""

import json
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, topic, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
protocol = sys.argv[5] if len(sys.argv) > 5 else "classic"

admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(30)

processed = []
lock = threading.Lock()
refused_commits = []


def member(name, stop):
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": name,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    if protocol == "consumer":
        # Timeouts and the assignor are the broker's under KIP-848.
        config["group.protocol"] = "consumer"
    else:
        config.update(
            {"session.timeout.ms": 6000, "heartbeat.interval.ms": 200, "partition.assignment.strategy": "range"}
        )
    consumer = Consumer(config)
    consumer.subscribe([topic])
    while not stop.is_set():
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error():
            raise KafkaException(message.error())
        try:
            consumer.commit(message=message, asynchronous=False)
        except KafkaException as error:
            refused_commits.append([name, str(error)])
            continue
        with lock:
            processed.append([name, message.partition(), message.offset(), message.value().decode()])
    consumer.close()


def produce():
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(count):
        producer.produce(topic, key=f"k{i}", value=f"r{i}")
        producer.poll(0)
        time.sleep(6.0 / count)
    if producer.flush(30):
        raise RuntimeError("records left unflushed")


stops = {name: threading.Event() for name in "abc"}
threads = {name: threading.Thread(target=member, args=(name, stops[name])) for name in "abc"}
producer = threading.Thread(target=produce)
producer.start()
threads["a"].start()
time.sleep(1.5)
threads["b"].start()
time.sleep(1.5)
threads["c"].start()
time.sleep(1.5)
stops["a"].set()
threads["a"].join()
time.sleep(1.5)
stops["b"].set()
threads["b"].join()
producer.join()
deadline = time.time() + 60
while time.time() < deadline:
    with lock:
        if len({row[3] for row in processed}) >= count:
            break
    time.sleep(0.2)
stops["c"].set()
threads["c"].join()
print(json.dumps({"processed": processed, "refused_commits": refused_commits}))
