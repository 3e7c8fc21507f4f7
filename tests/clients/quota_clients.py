"""Measures quotas and connection limits with real clients (issue #18).

    quota_clients.py produce BOOTSTRAP TOPIC WARMUP_S MEASURE_S
    quota_clients.py fill BOOTSTRAP TOPIC RECORDS
    quota_clients.py consume BOOTSTRAP TOPIC WARMUP_S MEASURE_S
    quota_clients.py amqp-hold HOST PORT USER PASSWORD
    quota_clients.py amqp-connect HOST PORT USER PASSWORD
    quota_clients.py kafka-login BOOTSTRAP USER PASSWORD

produce: confluent-kafka (librdkafka) produces 10 000-byte records to TOPIC as fast as it
may for WARMUP_S + MEASURE_S seconds and prints one JSON line: the value bytes per second
acknowledged during the last MEASURE_S seconds (`rate`) and the largest throttle time
librdkafka's statistics saw in the broker's responses (`throttle_max_ms`).
fill: produces RECORDS records of 10 000 bytes, unthrottled, and waits for them.
consume: a consumer reads TOPIC from the start in small fetches and prints the same JSON for
the bytes it received.
amqp-hold: pika opens a connection, prints `held`, and keeps it until stdin closes.
amqp-connect: pika opens a connection and prints `ok`, or `refused CODE TEXT`.
kafka-login: confluent-kafka logs in with SCRAM-SHA-256 on SASL_PLAINTEXT and lists topics;
prints `ok` or `failed TEXT`.
"""

import json
import sys
import time

RECORD_BYTES = 10_000


def throttle_tracker():
    seen = {"max": 0}

    def on_stats(text):
        stats = json.loads(text)
        for broker in stats.get("brokers", {}).values():
            throttle = broker.get("throttle", {})
            seen["max"] = max(seen["max"], throttle.get("max", 0))

    return seen, on_stats


def produce(bootstrap, topic, warmup_s, measure_s):
    from confluent_kafka import Producer

    seen, on_stats = throttle_tracker()
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "1",
        "linger.ms": 5,
        "batch.size": 65536,
        "queue.buffering.max.kbytes": 1024,
        "statistics.interval.ms": 200,
        "stats_cb": on_stats,
    })
    started = time.monotonic()
    measure_from = started + warmup_s
    end = measure_from + measure_s
    measured = {"bytes": 0}

    def delivered(error, message):
        if error is None and time.monotonic() >= measure_from:
            measured["bytes"] += len(message.value())

    value = b"x" * RECORD_BYTES
    while time.monotonic() < end:
        try:
            producer.produce(topic, value=value, on_delivery=delivered)
        except BufferError:
            producer.poll(0.005)
            continue
        producer.poll(0)
    # Only what was acknowledged within the window counts; the rest is abandoned.
    measured_bytes = measured["bytes"]
    producer.poll(0.5)
    print(json.dumps({"rate": measured_bytes / measure_s, "throttle_max_ms": seen["max"]}))
    producer.purge()
    producer.flush(5)


def fill(bootstrap, topic, records):
    from confluent_kafka import Producer

    # Batches of at most 64 KiB, so the consumer's small fetches return one or a few.
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5,
                         "batch.size": 65536})
    acknowledged = []
    for _ in range(records):
        while True:
            try:
                producer.produce(topic, value=b"y" * RECORD_BYTES,
                                 on_delivery=lambda error, message: acknowledged.append(error))
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    failed = [error for error in acknowledged if error is not None]
    if len(acknowledged) != records or failed:
        print(f"fill failed: {len(acknowledged)} acknowledged, errors {failed[:3]}")
        sys.exit(1)
    print("ok")


def consume(bootstrap, topic, warmup_s, measure_s):
    from confluent_kafka import Consumer, TopicPartition

    seen, on_stats = throttle_tracker()
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "quota-test",
        "enable.auto.commit": False,
        # Small fetches, so the measured window holds many of them.
        "fetch.max.bytes": 65536,
        "max.partition.fetch.bytes": 65536,
        "message.max.bytes": 65536,
        "statistics.interval.ms": 200,
        "stats_cb": on_stats,
    })
    consumer.assign([TopicPartition(topic, 0, 0)])
    started = time.monotonic()
    measure_from = started + warmup_s
    end = measure_from + measure_s
    measured_bytes = 0
    while time.monotonic() < end:
        message = consumer.poll(0.05)
        if message is None or message.error() is not None:
            continue
        if time.monotonic() >= measure_from:
            measured_bytes += len(message.value())
    consumer.poll(0.3)
    consumer.close()
    print(json.dumps({"rate": measured_bytes / measure_s, "throttle_max_ms": seen["max"]}))


def amqp_parameters(host, port, user, password):
    import pika

    return pika.ConnectionParameters(
        host=host, port=int(port), credentials=pika.PlainCredentials(user, password),
        connection_attempts=1, retry_delay=0, socket_timeout=10, blocked_connection_timeout=10,
    )


def amqp_hold(host, port, user, password):
    import pika

    connection = pika.BlockingConnection(amqp_parameters(host, port, user, password))
    print("held", flush=True)
    sys.stdin.read()
    connection.close()


def amqp_connect(host, port, user, password):
    import pika

    try:
        connection = pika.BlockingConnection(amqp_parameters(host, port, user, password))
    except pika.exceptions.ConnectionClosedByBroker as error:
        print(f"refused {error.reply_code} {error.reply_text}")
        return
    except pika.exceptions.AMQPConnectionError as error:
        # pika wraps a close during the handshake; the broker's reply is inside.
        print(f"refused {error!r}")
        return
    connection.close()
    print("ok")


def kafka_login(bootstrap, user, password):
    from confluent_kafka import Producer

    errors = []
    client = Producer({
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": password,
        "reconnect.backoff.ms": 500,
        "error_cb": lambda error: errors.append(error),
    })
    try:
        client.list_topics(timeout=5)
    except Exception as error:  # noqa: BLE001 - any failure is the answer
        errors.append(error)
    # Error callbacks (the authentication failure) are served by poll.
    client.poll(1.0)
    if errors:
        print("failed " + " | ".join(str(error) for error in errors))
    else:
        print("ok")


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "produce":
        produce(args[0], args[1], float(args[2]), float(args[3]))
    elif command == "fill":
        fill(args[0], args[1], int(args[2]))
    elif command == "consume":
        consume(args[0], args[1], float(args[2]), float(args[3]))
    elif command == "amqp-hold":
        amqp_hold(*args)
    elif command == "amqp-connect":
        amqp_connect(*args)
    elif command == "kafka-login":
        kafka_login(*args)
    else:
        print(f"unknown command {command}")
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
