"""pika against a replicated quorum queue while the fault loop hurts its brokers (issue #21).

    pika_queue_faults.py declare ADDRS QUEUE
    pika_queue_faults.py publish ADDRS QUEUE RATE STOPFILE OUT
    pika_queue_faults.py consume ADDRS QUEUE STOPFILE OUT

ADDRS: the nodes' AMQP listeners, HOST:PORT separated by commas. Every phase moves on to
the next node whenever a connection or a channel fails (a killed, paused or deposed node).

declare: declares QUEUE durable with x-queue-type quorum (replicated on the three nodes)
through the first node that answers; prints {"declared": QUEUE}.

publish: publishes persistent messages `q-SEQ` (SEQ counting up from 0) to QUEUE through
the default exchange with publisher confirms, at about RATE a second, until STOPFILE
exists. Each outcome is one line of OUT: `C TIME VALUE` when confirmed, `F TIME VALUE
ERROR` when nacked, returned or lost with its connection (TIME: seconds since the epoch).
A message that failed is not sent again. Prints {"confirmed": n, "failed": n}.

consume: consumes QUEUE (prefetch 20, manual acks) and writes `D TIME VALUE REDELIVERED`
(1 or 0) for each delivery before acking it; a consumer the broker cancels (its queue's
leader went away) subscribes again. Once STOPFILE exists it goes on until nothing came for
15 s: longer than the queue's leader keeps the deliveries of a subscription whose node
died (10 s, PULL_LEASE) before it returns them. Prints {"delivered": n}.
"""

import json
import os
import sys
import time

import pika

phase, addresses, queue = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
# guest/guest works from loopback only; brokers beyond it (network namespaces) get a user,
# named with its password in WHARF_FAULT_AMQP_LOGIN ("user:password").
LOGIN = os.environ.get("WHARF_FAULT_AMQP_LOGIN", "guest:guest").split(":", 1)


def connect(index):
    host, port = addresses[index % len(addresses)].rsplit(":", 1)
    params = pika.ConnectionParameters(
        host=host,
        port=int(port),
        credentials=pika.PlainCredentials(*LOGIN),
        connection_attempts=1,
        socket_timeout=3,
        stack_timeout=5,
        blocked_connection_timeout=10,
        heartbeat=2,
    )
    return pika.BlockingConnection(params)


def log(text):
    print(f"{time.time():.3f} {text}", file=sys.stderr, flush=True)


def close(connection):
    try:
        if connection is not None and connection.is_open:
            connection.close()
    except Exception:  # noqa: BLE001 - a dead connection may fail any way
        pass


def declare():
    deadline = time.time() + 60
    index = 0
    while True:
        connection = None
        try:
            connection = connect(index)
            channel = connection.channel()
            channel.queue_declare(
                queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            close(connection)
            print(json.dumps({"declared": queue}))
            return
        except Exception as error:  # noqa: BLE001
            close(connection)
            if time.time() > deadline:
                raise SystemExit(f"cannot declare {queue}: {error}") from error
            index += 1
            time.sleep(0.5)


class Lines:
    def __init__(self, path):
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115

    def put(self, line):
        self.file.write(line + "\n")
        self.file.flush()


def publish(rate, stop, out):
    lines = Lines(out)
    started = time.time()
    sequence = 0
    confirmed = failed = 0
    index = 0
    connection = channel = None
    while not os.path.exists(stop):
        if channel is None:
            try:
                connection = connect(index)
                channel = connection.channel()
                channel.confirm_delivery()
            except Exception:  # noqa: BLE001
                close(connection)
                connection = channel = None
                index += 1
                time.sleep(0.2)
                continue
        value = f"q-{sequence}"
        sequence += 1
        try:
            channel.basic_publish(
                "",
                queue,
                value.encode(),
                pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
            lines.put(f"C {time.time():.6f} {value}")
            confirmed += 1
        except Exception as error:  # noqa: BLE001 - nack, return, or a lost connection
            reason = str(error).replace("\n", " ") or type(error).__name__
            log(f"publish through {addresses[index % len(addresses)]}: {reason}")
            lines.put(f"F {time.time():.6f} {value} {reason}")
            failed += 1
            close(connection)
            connection = channel = None
            index += 1
            time.sleep(0.1)
        due = started + sequence / rate
        if due > time.time():
            time.sleep(due - time.time())
    close(connection)
    print(json.dumps({"confirmed": confirmed, "failed": failed}))


def consume(stop, out):
    lines = Lines(out)
    delivered = 0
    last = time.time()
    index = 0
    connection = channel = None

    def on_message(channel, method, properties, body):  # noqa: ARG001
        nonlocal delivered, last
        again = 1 if method.redelivered else 0
        lines.put(f"D {time.time():.6f} {body.decode()} {again}")
        channel.basic_ack(method.delivery_tag)
        delivered += 1
        last = time.time()

    while True:
        stopping = os.path.exists(stop)
        if stopping and time.time() - last > 15:
            break
        try:
            if channel is None:
                connection = connect(index)
                channel = connection.channel()
                channel.basic_qos(prefetch_count=20)
                channel.basic_consume(queue, on_message)
                log(f"consuming through {addresses[index % len(addresses)]}")
            connection.process_data_events(time_limit=0.5)
            if not channel.consumer_tags:
                raise RuntimeError("the broker cancelled the consumer")
        except Exception as error:  # noqa: BLE001
            log(f"through {addresses[index % len(addresses)]}: {type(error).__name__}: {error}")
            close(connection)
            connection = channel = None
            index += 1
            time.sleep(0.2)
    close(connection)
    print(json.dumps({"delivered": delivered}))


if phase == "declare":
    declare()
elif phase == "publish":
    publish(float(sys.argv[4]), sys.argv[5], sys.argv[6])
elif phase == "consume":
    consume(sys.argv[4], sys.argv[5])
else:
    raise SystemExit(f"unknown phase {phase}")
