"""Drives a three-node wharfd cluster's group and transaction coordinator with
confluent-kafka (librdkafka), issue #21: committed offsets and transactions must outlive the
coordinator's node.

    confluent_coordinator.py group BOOTSTRAP TOPIC GROUP COUNT
    confluent_coordinator.py txn-open BOOTSTRAP TOPIC TRANSACTIONAL_ID
    confluent_coordinator.py txn-after BOOTSTRAP TOPIC TRANSACTIONAL_ID
    confluent_coordinator.py txn-across BOOTSTRAP TOPIC TRANSACTIONAL_ID
    confluent_coordinator.py steady BOOTSTRAP TOPIC GROUP PID SECONDS

group: a member of GROUP (subscribed to TOPIC, auto.offset.reset earliest, no auto commit)
reads COUNT records, commits synchronously, and reads the committed offset back; prints
{"read": [values], "committed": offset}.
txn-open: a transactional producer commits a transaction of "c0".."c4" to partition 0,
then leaves a second one ("o0".."o4") open and exits without ending it (its process dies,
as with a crash); prints {"committed": 5}.
txn-after: a producer of the same transactional id (its init retried for up to 60 s while
the coordinator moves) commits "a0".."a4"; a read_committed consumer then reads partition
0 from the start until it is quiet; prints {"values": [values]}.
txn-across: a transactional producer opens a transaction with "s0".."s4" on partition 0,
prints {"open": true}, waits for a line on its standard input (the test moves the
coordinator meanwhile), writes "s5".."s9" and commits; prints {"committed": true} or
{"committed": false, "error": text}.
steady: two members of GROUP (the classic protocol, range) share TOPIC's partitions while
a producer writes a record every 20 ms; once both hold partitions and 3 s passed without
a rebalance callback, the coordinator's process PID is SIGKILLed, and the members go on
for SECONDS more, then each commits synchronously (refused, were it not a member of the
group the coordinator now holds). Prints {"settled": bool, "events_after_kill": [[member,
"assign" | "revoke", [partitions]]], "read_after_kill": [count per member], "last_read_s":
seconds after the kill of the last record read, "commits": ["ok" or the error, per
member]}.
"""

import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition, OFFSET_BEGINNING


def group(bootstrap, topic, group_id, count):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    read = []
    deadline = time.time() + 90
    while len(read) < count and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        read.append(message.value().decode())
    while True:
        try:
            consumer.commit(asynchronous=False)
            break
        except KafkaException as error:
            # The coordinator may be moving: librdkafka finds the new one; try again.
            if time.time() > deadline:
                raise SystemExit(f"commit failed: {error}")
            time.sleep(0.5)
    committed = consumer.committed([TopicPartition(topic, 0)], timeout=30)[0].offset
    consumer.close()
    return {"read": read, "committed": committed}


def transactional(bootstrap, transactional_id):
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 60000,
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    deadline = time.time() + 60
    while True:
        try:
            producer.init_transactions(10)
            return producer
        except KafkaException as error:
            if not error.args[0].retriable() or time.time() > deadline:
                raise
            time.sleep(0.5)


def write(producer, topic, prefix, indexes):
    """Produces PREFIX0.. (one value per index) to partition 0 of TOPIC."""
    for index in indexes:
        producer.produce(topic, f"{prefix}{index}".encode(), partition=0)


def txn_open(bootstrap, topic, transactional_id):
    producer = transactional(bootstrap, transactional_id)
    producer.begin_transaction()
    write(producer, topic, "c", range(5))
    producer.commit_transaction(30)
    producer.begin_transaction()
    write(producer, topic, "o", range(5))
    producer.flush(30)
    print(json.dumps({"committed": 5}), flush=True)
    # Dies with the transaction open: no EndTxn, no clean close.
    os._exit(0)


def txn_after(bootstrap, topic, transactional_id):
    producer = transactional(bootstrap, transactional_id)
    producer.begin_transaction()
    write(producer, topic, "a", range(5))
    producer.commit_transaction(30)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"coordinator-reader-{time.time()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    values = []
    quiet_since = time.time()
    deadline = time.time() + 60
    while time.time() - quiet_since < 5 and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        values.append(message.value().decode())
        quiet_since = time.time()
    consumer.close()
    return {"values": values}


def txn_across(bootstrap, topic, transactional_id):
    producer = transactional(bootstrap, transactional_id)
    producer.begin_transaction()
    write(producer, topic, "s", range(5))
    producer.flush(30)
    print(json.dumps({"open": True}), flush=True)
    sys.stdin.readline()
    try:
        write(producer, topic, "s", range(5, 10))
        producer.commit_transaction(60)
        return {"committed": True}
    except KafkaException as error:
        return {"committed": False, "error": str(error)}


def steady(bootstrap, topic, group_id, pid, seconds):
    events = []
    killed_at = [None]

    def callbacks(member):
        def on_assign(_consumer, partitions):
            events.append((time.time(), member, "assign", sorted(p.partition for p in partitions)))

        def on_revoke(_consumer, partitions):
            events.append((time.time(), member, "revoke", sorted(p.partition for p in partitions)))

        return on_assign, on_revoke

    members = []
    for member in range(2):
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "range",
                "topic.metadata.refresh.interval.ms": 500,
                # Committed once, at the end: a commit with nothing new raises _NO_OFFSET.
                "enable.auto.commit": False,
            }
        )
        on_assign, on_revoke = callbacks(member)
        consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        members.append(consumer)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    read_after = [0, 0]
    last_read = [None]
    settled = False
    deadline = time.time() + 60
    sent = 0
    next_send = time.time()
    while True:
        now = time.time()
        if now >= next_send:
            producer.produce(topic, value=f"s{sent}".encode())
            producer.poll(0)
            sent += 1
            next_send = now + 0.02
        for member, consumer in enumerate(members):
            message = consumer.poll(0.05)
            if message is not None and message.error() is None and killed_at[0] is not None:
                read_after[member] += 1
                last_read[0] = time.time()
        if killed_at[0] is None:
            assigned = {member for (_, member, kind, parts) in events if kind == "assign" and parts}
            quiet = not events or now - events[-1][0] >= 3
            if len(assigned) == 2 and quiet:
                settled = True
                killed_at[0] = time.time()
                os.kill(pid, 9)
            elif now > deadline:
                break
        elif now - killed_at[0] >= seconds:
            break
    commits = []
    for consumer in members:
        try:
            consumer.commit(asynchronous=False)
            commits.append("ok")
        except KafkaException as error:
            commits.append(str(error))
    # Taken before the members close (closing revokes their partitions).
    after = [
        [member, kind, parts] for (at, member, kind, parts) in events
        if killed_at[0] is not None and at >= killed_at[0]
    ]
    for consumer in members:
        consumer.close()
    producer.flush(10)
    return {
        "settled": settled,
        "events_after_kill": after,
        "read_after_kill": read_after,
        "last_read_s": None if last_read[0] is None else last_read[0] - killed_at[0],
        "commits": commits,
    }


def main():
    mode, bootstrap, topic = sys.argv[1:4]
    if mode == "group":
        result = group(bootstrap, topic, sys.argv[4], int(sys.argv[5]))
    elif mode == "txn-open":
        txn_open(bootstrap, topic, sys.argv[4])
        return
    elif mode == "txn-after":
        result = txn_after(bootstrap, topic, sys.argv[4])
    elif mode == "txn-across":
        result = txn_across(bootstrap, topic, sys.argv[4])
    elif mode == "steady":
        result = steady(bootstrap, topic, sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
