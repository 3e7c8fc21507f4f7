"""The clients of the replication fault loop (issue #21): a writer, a live reader and a final
reader of a replicated topic on a three-node wharfd cluster, driven by confluent-kafka
(librdkafka). The test (tests/tests/fault_loop.rs) injects the faults and checks the files.

    confluent_faults.py create BOOTSTRAP TOPIC PARTITIONS
    confluent_faults.py write BOOTSTRAP TOPIC PARTITIONS ACKS RATE STOPFILE OUT
    confluent_faults.py read BOOTSTRAP TOPIC PARTITIONS STOPFILE OUT
    confluent_faults.py readall BOOTSTRAP TOPIC PARTITIONS
    confluent_faults.py leaders BOOTSTRAP TOPIC PARTITIONS
    confluent_faults.py txn BOOTSTRAP TOPIC PARTITIONS STOPFILE OUT
    confluent_faults.py readcommitted BOOTSTRAP TOPIC PARTITIONS

create: makes TOPIC with PARTITIONS partitions and replication factor 3 and waits until every
partition has a leader; prints {"partitions": N}.
write: writes values "P-SEQ" to partition P (SEQ counts up from 0 per partition), round
robin, at about RATE records a second, until STOPFILE exists; then waits up to 120 s for
the outstanding ones. ACKS "all" makes an idempotent producer; "1" a plain acks=1 one. Each
delivery report is one line of OUT: "A TIME PARTITION OFFSET VALUE" when acknowledged
(OFFSET -1 with acks 1),
"F TIME VALUE ERROR" when failed (TIME: seconds since the epoch).
read: a consumer assigned every partition from the earliest offset writes one line
"S PARTITION OFFSET VALUE" to OUT for each record it receives, until STOPFILE exists.
readall: reads every partition from the earliest offset to its high watermark; prints
{"PARTITION": [[offset, value], ...]}.
leaders: prints each partition's leader as the metadata names it ([id, ...], -1: none).
txn: a transactional producer (transactional.id "fault-txn") runs transactions of
TXN_RECORDS records "tN-I/TXN_RECORDS" spread over the partitions, committing two in three
and aborting the third, until STOPFILE exists. Each outcome is one line of OUT: "C TIME N"
committed, "A TIME N" aborted, "U TIME N ERROR" unknown (the producer failed fatally while
ending it: a new producer, whose init completes or aborts it, takes over).
readcommitted: reads every partition from the earliest offset with read_committed until
its position reaches the last stable offset; prints {"PARTITION": [[offset, value], ...]}.
"""

import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic


def create(bootstrap, topic, partitions):
    # Until every node registered its listeners the cluster may refuse three replicas, or
    # the metadata may not list the controller yet: ask again, with a new client (librdkafka
    # keeps the metadata it first saw), for up to 60 s.
    deadline = time.time() + 60
    while True:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        listed = admin.list_topics(timeout=10)
        if len(listed.brokers) < 3 or listed.controller_id not in listed.brokers:
            if time.time() > deadline:
                raise SystemExit(f"the metadata lists {listed.brokers} in 60 s")
            time.sleep(0.5)
            continue
        future = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=3)],
            request_timeout=10,
        )[topic]
        try:
            future.result(timeout=15)
            break
        except Exception as error:  # noqa: BLE001 - any refusal is retried until the deadline
            if "TOPIC_ALREADY_EXISTS" in str(error):
                break
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    deadline = time.time() + 60
    while True:
        described = admin.list_topics(topic=topic, timeout=30).topics.get(topic)
        if (
            described is not None
            and described.error is None
            and len(described.partitions) == partitions
            and all(
                len(p.replicas) == 3 and p.leader >= 0 for p in described.partitions.values()
            )
        ):
            return {"partitions": partitions}
        if time.time() > deadline:
            raise SystemExit(f"{topic} not placed on three replicas in time")
        time.sleep(0.2)


def write(bootstrap, topic, partitions, acks, rate, stopfile, out_path):
    config = {
        "bootstrap.servers": bootstrap,
        "acks": acks,
        "linger.ms": 5,
        # A fault heals within seconds; nothing may time out in between, so every record
        # is either acknowledged or failed for a reason the checker reads.
        "message.timeout.ms": 120000,
        "topic.metadata.refresh.interval.ms": 500,
        "reconnect.backoff.max.ms": 500,
    }
    if acks == "all":
        config["enable.idempotence"] = True
    # WHARF_FAULT_CLIENT_DEBUG=eos,msg (librdkafka's debug contexts) logs the writer's
    # idempotence and retries into writer.log, for a stalled run kept with WHARF_FAULT_KEEP.
    if os.environ.get("WHARF_FAULT_CLIENT_DEBUG"):
        config["debug"] = os.environ["WHARF_FAULT_CLIENT_DEBUG"]
    producer = Producer(config)
    out = open(out_path, "w", buffering=1)

    def delivered(error, message):
        now = time.time()
        value = message.value().decode()
        if error is not None:
            out.write(f"F {now:.3f} {value} {str(error).replace(chr(10), ' ')}\n")
        else:
            # The control run's brokers (acks=1) answer without an offset, from which
            # librdkafka counts on (-1, 0, 1 ... in a batch): record none.
            offset = message.offset() if acks == "all" else None
            offset = -1 if offset is None or offset < 0 else offset
            out.write(f"A {now:.3f} {message.partition()} {offset} {value}\n")

    sequences = [0] * partitions
    sent = 0
    started = time.time()
    while not os.path.exists(stopfile):
        partition = sent % partitions
        value = f"{partition}-{sequences[partition]}"
        try:
            producer.produce(topic, value=value.encode(), partition=partition, on_delivery=delivered)
        except BufferError:
            producer.poll(0.05)
            continue
        sequences[partition] += 1
        sent += 1
        producer.poll(0)
        ahead = sent / rate - (time.time() - started)
        if ahead > 0:
            producer.poll(ahead)
    left = producer.flush(120)
    if left:
        out.write(f"L {time.time():.3f} {left}\n")
    out.close()
    return {"sent": sent}


def read(bootstrap, topic, partitions, stopfile, out_path):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fault-reader-{time.time()}",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 500,
            "reconnect.backoff.max.ms": 500,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    seen = 0
    with open(out_path, "w", buffering=1) as out:
        while not os.path.exists(stopfile):
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            out.write(f"S {message.partition()} {message.offset()} {message.value().decode()}\n")
            seen += 1
    consumer.close()
    return {"seen": seen}


def readall(bootstrap, topic, partitions):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fault-checker-{time.time()}",
            "enable.auto.commit": False,
        }
    )
    ends = {}
    for p in range(partitions):
        deadline = time.time() + 90
        while True:
            try:
                ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                break
            except KafkaException as error:
                if time.time() > deadline:
                    raise
                print(f"readall: watermarks of partition {p}: {error}", file=sys.stderr)
                # A new client, with no metadata cached: a CI run's checker got "Unknown
                # partition" for 60 s from one client after the namespaces loop's faults.
                consumer.close()
                time.sleep(1)
                consumer = Consumer(
                    {
                        "bootstrap.servers": bootstrap,
                        "group.id": f"fault-checker-{time.time()}",
                        "enable.auto.commit": False,
                    }
                )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    stored = {str(p): [] for p in range(partitions)}
    deadline = time.time() + 120

    def done():
        return all(
            ends[p] == 0 or (stored[str(p)] and stored[str(p)][-1][0] + 1 >= ends[p])
            for p in range(partitions)
        )

    while not done():
        if time.time() > deadline:
            raise SystemExit(f"readall: not at the high watermarks {ends} within 120 s")
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        stored[str(message.partition())].append([message.offset(), message.value().decode()])
    consumer.close()
    return stored


TXN_RECORDS = 4


def txn(bootstrap, topic, partitions, stopfile, out_path):
    config = {
        "bootstrap.servers": bootstrap,
        "transactional.id": "fault-txn",
        "transaction.timeout.ms": 30000,
        "message.timeout.ms": 30000,
        "topic.metadata.refresh.interval.ms": 500,
        "reconnect.backoff.max.ms": 500,
        "linger.ms": 5,
    }
    if os.environ.get("WHARF_FAULT_CLIENT_DEBUG"):
        config["debug"] = os.environ["WHARF_FAULT_CLIENT_DEBUG"]
    out = open(out_path, "w", buffering=1)

    def started():
        # init_transactions completes or aborts what a previous producer of the id left.
        while True:
            producer = Producer(config)
            try:
                producer.init_transactions(30)
                return producer
            except KafkaException as error:
                print(f"txn: init: {error}", file=sys.stderr)
                time.sleep(0.5)

    def retrying(call):
        # Retriable errors (a coordinator or leader changing) are tried again; the others
        # go to the caller.
        deadline = time.time() + 60
        while True:
            try:
                return call()
            except KafkaException as error:
                if not error.args[0].retriable() or time.time() > deadline:
                    raise
                time.sleep(0.2)

    producer = started()
    number = 0
    outcomes = {"C": 0, "A": 0, "U": 0}
    while not os.path.exists(stopfile):
        commit = number % 3 != 2
        try:
            producer.begin_transaction()
            for index in range(TXN_RECORDS):
                producer.produce(
                    topic, value=f"t{number}-{index}/{TXN_RECORDS}".encode(), partition=index % partitions
                )
            producer.flush(30)
            if commit:
                retrying(lambda: producer.commit_transaction(30))
                outcome = "C"
            else:
                retrying(lambda: producer.abort_transaction(30))
                outcome = "A"
            out.write(f"{outcome} {time.time():.3f} {number}\n")
        except KafkaException as error:
            reason = str(error).replace(chr(10), " ")
            if error.args[0].txn_requires_abort():
                try:
                    retrying(lambda: producer.abort_transaction(30))
                    out.write(f"A {time.time():.3f} {number}\n")
                    outcome = "A"
                except KafkaException as abort_error:
                    out.write(f"U {time.time():.3f} {number} {reason}; abort: {abort_error}\n")
                    outcome = "U"
                    producer = started()
            else:
                out.write(f"U {time.time():.3f} {number} {reason}\n")
                outcome = "U"
                producer = started()
        outcomes[outcome] += 1
        number += 1
        time.sleep(0.05)
    out.close()
    return {"transactions": number, "outcomes": outcomes}


def readcommitted(bootstrap, topic, partitions):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fault-txn-checker-{time.time()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    # With read_committed the watermark asked is the last stable offset.
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    stored = {str(p): [] for p in range(partitions)}
    deadline = time.time() + 120

    idle_since = time.time()

    def done():
        # The position counts the records returned: one past the last committed record,
        # short of the end when aborted records and markers close the partition; so a
        # partition is also done when nothing came for 8 s.
        positions = consumer.position([TopicPartition(topic, p) for p in range(partitions)])
        reached = all(ends[pos.partition] == 0 or pos.offset >= ends[pos.partition] for pos in positions)
        return reached or time.time() - idle_since > 8

    while not done():
        if time.time() > deadline:
            raise SystemExit(f"readcommitted: not at the last stable offsets {ends} within 120 s")
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        idle_since = time.time()
        stored[str(message.partition())].append([message.offset(), message.value().decode()])
    consumer.close()
    return stored


def leaders(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    described = admin.list_topics(topic=topic, timeout=30).topics[topic]
    return [
        described.partitions[p].leader if p in described.partitions else -1
        for p in range(partitions)
    ]


def main():
    mode, bootstrap, topic, partitions = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rest = sys.argv[5:]
    if mode == "create":
        result = create(bootstrap, topic, partitions)
    elif mode == "write":
        acks, rate, stopfile, out = rest[0], float(rest[1]), rest[2], rest[3]
        result = write(bootstrap, topic, partitions, acks, rate, stopfile, out)
    elif mode == "read":
        result = read(bootstrap, topic, partitions, rest[0], rest[1])
    elif mode == "readall":
        result = readall(bootstrap, topic, partitions)
    elif mode == "leaders":
        result = leaders(bootstrap, topic, partitions)
    elif mode == "txn":
        result = txn(bootstrap, topic, partitions, rest[0], rest[1])
    elif mode == "readcommitted":
        result = readcommitted(bootstrap, topic, partitions)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


main()
