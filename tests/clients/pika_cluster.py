"""pika against a three-node wharfd cluster: any node serves any queue (issue #20).

    pika_cluster.py AMQP1 AMQP2 AMQP3 QUEUE COUNT publish
    pika_cluster.py AMQP1 AMQP2 AMQP3 QUEUE COUNT consume EXPECTED
    pika_cluster.py AMQP1 AMQP2 AMQP3 QUEUE COUNT auto-delete
    pika_cluster.py AMQP1 AMQP2 AMQP3 QUEUE COUNT exchange-binding

AMQPn is HOST:PORT of node n's AMQP listener. The metadata log places QUEUE on one node,
which stores and delivers its messages; the other nodes hand their operations on it to
that node.

publish: declares QUEUE (durable) through node 2 and a direct exchange `cx` bound to it
with key `k` through node 3, then publishes COUNT persistent messages through each node
with confirms (mandatory, so an unroutable one fails): `n{node}-{i}`, odd i through the
default exchange, even i through `cx`. Prints {"counts": [message count each node's
passive declare reports]}.

consume: through node 1, basic.get one message and nack it with requeue; through node 3,
basic.get one with auto-ack (the nacked one again); then consumes through node 1 (prefetch
10, manual acks) until half of what is left has come, and through node 2 until EXPECTED
messages were taken in all (the cancel of the first consumer returns up to 10 it was sent
but had not taken, marked redelivered). Prints {"nacked": body, "got_acked": [body,
redelivered], "consumed": [[body, redelivered], ...], "counts": [each node's passive count
afterwards]}.

auto-delete: declares QUEUE durable and auto-delete through node 1, consumes it through
node 2 and node 3, cancels node 2's consumer, then node 3's. Prints {"after_first":
[whether each node still has QUEUE after the first cancel], "after_last": [whether each
node has it after the last cancel, waited for up to 10 s]}.

exchange-binding: declares a topic exchange `e2e-src` through node 1, a fanout `e2e-dst`
through node 2, QUEUE (durable) bound to `e2e-dst` through node 2, and binds `e2e-dst` to
`e2e-src` with `a.#` through node 3; publishes one mandatory message with key `a.b` to
`e2e-src` through each node, with confirms; unbinds `e2e-dst` from `e2e-src` through node
1, then publishes one more mandatory message through each node. Prints {"routed":
[counts each node reports after the first round], "returned": [whether each node returned
its message of the second round as unroutable]}.

transient: RabbitMQ's tutorials with pika's defaults (durable=False): through node 1
declares QUEUE, a fanout exchange `tx-logs` and a queue `QUEUE-logs` bound to it, all
transient, and publishes `hello` to QUEUE through the default exchange; through node 3
publishes `line` to `tx-logs`; through node 2 declares QUEUE again as the tutorial's
consumer does and basic.gets one message from QUEUE and one from `QUEUE-logs`; then through
node 3 declares QUEUE durable and `tx-logs` durable, each on its own channel. Also
tutorial 3's subscriber: through node 2 an exclusive server-named queue bound to `tx-logs`
gets a message published through node 1; a consumer of it through node 3 is refused; once
its connection closed, a passive declare through each node finds it gone. Prints {"got":
[body or null, body or null], "exclusive_got": body or null, "locked": reply code,
"gone": [whether each node answers 404], "durable_queue": reply code, "durable_exchange":
reply code} (0 when a declare was accepted).

owner-dies PID3: through node 3 (whose process id is PID3) an exclusive server-named queue
bound to a durable fanout exchange `od-x`, its connection left open; once node 1 knows the
queue, node 3 is SIGKILLed; then a passive declare through node 1 every half second until
it answers 404 (90 s at most), and a publish to `od-x` with confirms through node 1. Prints
{"seen": whether node 1 knew the queue before the kill, "gone_after_s": seconds from the
kill to the 404 or null, "confirm_s": seconds the publish took to be confirmed}.

Any client error exits 1.
"""

import json
import sys
import time

import pika

amqp = sys.argv[1:4]
queue, count, phase = sys.argv[4], int(sys.argv[5]), sys.argv[6]


def connect(address):
    host, port = address.rsplit(":", 1)
    params = pika.ConnectionParameters(
        host=host,
        port=int(port),
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=3,
        retry_delay=1,
        blocked_connection_timeout=30,
    )
    return pika.BlockingConnection(params)


def counts():
    found = []
    for address in amqp:
        connection = connect(address)
        declared = connection.channel().queue_declare(queue, passive=True)
        found.append(declared.method.message_count)
        connection.close()
    return found


def publish():
    connection = connect(amqp[1])
    connection.channel().queue_declare(queue, durable=True)
    connection.close()
    connection = connect(amqp[2])
    channel = connection.channel()
    channel.exchange_declare("cx", exchange_type="direct", durable=True)
    channel.queue_bind(queue, "cx", routing_key="k")
    connection.close()
    # Every node applies the definitions from the metadata log a heartbeat or so after
    # the node that proposed them.
    time.sleep(1.5)
    for node, address in enumerate(amqp, start=1):
        connection = connect(address)
        channel = connection.channel()
        channel.confirm_delivery()
        for i in range(count):
            exchange, key = ("cx", "k") if i % 2 == 0 else ("", queue)
            channel.basic_publish(
                exchange,
                key,
                b"n%d-%d" % (node, i),
                pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
        connection.close()
    print(json.dumps({"counts": counts()}))


def consume_through(address, wanted, consumed):
    connection = connect(address)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=10)
    taken = 0
    deadline = time.time() + 30
    for method, properties, body in channel.consume(queue, inactivity_timeout=1.0):
        if method is not None:
            consumed.append([body.decode(), method.redelivered])
            channel.basic_ack(method.delivery_tag)
            taken += 1
            if taken == wanted:
                break
        if time.time() > deadline:
            break
    channel.cancel()
    connection.close()


def consume(expected):
    connection = connect(amqp[0])
    channel = connection.channel()
    method, _, nacked = channel.basic_get(queue, auto_ack=False)
    assert method is not None, "basic.get through node 1 found nothing"
    channel.basic_nack(method.delivery_tag, requeue=True)
    connection.close()

    connection = connect(amqp[2])
    method, _, got_acked = connection.channel().basic_get(queue, auto_ack=True)
    assert method is not None, "basic.get through node 3 found nothing"
    got_redelivered = method.redelivered
    connection.close()

    consumed = []
    left = expected - 1
    consume_through(amqp[0], left // 2, consumed)
    consume_through(amqp[1], left - len(consumed), consumed)
    print(
        json.dumps(
            {
                "nacked": nacked.decode(),
                "got_acked": [got_acked.decode(), got_redelivered],
                "consumed": consumed,
                "counts": counts(),
            }
        )
    )


def exists(address):
    connection = connect(address)
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
        return False
    finally:
        if connection.is_open:
            connection.close()


def auto_delete():
    connection = connect(amqp[0])
    connection.channel().queue_declare(queue, durable=True, auto_delete=True)
    connection.close()
    time.sleep(1.5)
    consumers = []
    for address in amqp[1:]:
        connection = connect(address)
        channel = connection.channel()
        channel.basic_consume(queue, lambda *args: None)
        consumers.append((connection, channel))
    for connection, channel in consumers:
        # A round trip: the consume is registered at the leader.
        connection.process_data_events(time_limit=0.2)
    connection, channel = consumers[0]
    channel.cancel()
    connection.close()
    time.sleep(1.5)
    after_first = [exists(address) for address in amqp]
    connection, channel = consumers[1]
    channel.cancel()
    connection.close()
    deadline = time.time() + 10
    after_last = [exists(address) for address in amqp]
    while any(after_last) and time.time() < deadline:
        time.sleep(0.3)
        after_last = [exists(address) for address in amqp]
    print(json.dumps({"after_first": after_first, "after_last": after_last}))


def publish_mandatory(address, key, body):
    """True if the message was routed, False if it came back unroutable."""
    connection = connect(address)
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        channel.basic_publish("e2e-src", key, body, mandatory=True)
        return True
    except pika.exceptions.UnroutableError:
        return False
    finally:
        connection.close()


def exchange_binding():
    connection = connect(amqp[0])
    connection.channel().exchange_declare("e2e-src", exchange_type="topic", durable=True)
    connection.close()
    connection = connect(amqp[1])
    channel = connection.channel()
    channel.exchange_declare("e2e-dst", exchange_type="fanout", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, "e2e-dst")
    connection.close()
    time.sleep(1.5)
    connection = connect(amqp[2])
    connection.channel().exchange_bind("e2e-dst", "e2e-src", routing_key="a.#")
    connection.close()
    time.sleep(1.5)
    for node, address in enumerate(amqp, start=1):
        assert publish_mandatory(address, "a.b", b"e2e-%d" % node), (
            "unroutable through node %d" % node
        )
    routed = counts()
    connection = connect(amqp[0])
    connection.channel().exchange_unbind("e2e-dst", "e2e-src", routing_key="a.#")
    connection.close()
    time.sleep(1.5)
    returned = [not publish_mandatory(address, "a.b", b"late") for address in amqp]
    print(json.dumps({"routed": routed, "returned": returned}))


def declare_refusal(address, declare):
    """The reply code of a channel the broker closed on `declare`, else 0."""
    connection = connect(address)
    channel = connection.channel()
    try:
        declare(channel)
    except pika.exceptions.ChannelClosedByBroker as closed:
        connection.close()
        return closed.reply_code
    connection.close()
    return 0


def transient():
    connection = connect(amqp[0])
    channel = connection.channel()
    channel.queue_declare(queue=queue)
    channel.exchange_declare(exchange="tx-logs", exchange_type="fanout")
    channel.queue_declare(queue=queue + "-logs")
    channel.queue_bind(exchange="tx-logs", queue=queue + "-logs")
    channel.basic_publish(exchange="", routing_key=queue, body=b"hello")
    connection.close()
    time.sleep(1.5)
    connection = connect(amqp[2])
    connection.channel().basic_publish(exchange="tx-logs", routing_key="", body=b"line")
    connection.close()
    connection = connect(amqp[1])
    channel = connection.channel()
    channel.queue_declare(queue=queue)
    got = []
    for name in (queue, queue + "-logs"):
        body = None
        for _ in range(50):
            method, _properties, body = channel.basic_get(name, auto_ack=True)
            if method is not None:
                break
            time.sleep(0.1)
        got.append(body.decode() if body is not None else None)
    connection.close()
    # Tutorial 3's subscriber: an exclusive server-named queue through node 2, bound to the
    # transient exchange; a message published through node 1 reaches it.
    subscriber = connect(amqp[1])
    sub_channel = subscriber.channel()
    exclusive = sub_channel.queue_declare(queue="", exclusive=True).method.queue
    sub_channel.queue_bind(exchange="tx-logs", queue=exclusive)
    time.sleep(1.5)
    connection = connect(amqp[0])
    connection.channel().basic_publish(exchange="tx-logs", routing_key="", body=b"to-exclusive")
    connection.close()
    exclusive_got = None
    for _ in range(50):
        method, _properties, body = sub_channel.basic_get(exclusive, auto_ack=True)
        if method is not None:
            exclusive_got = body.decode()
            break
        time.sleep(0.1)
    # Another connection, through node 3, cannot take it.
    locked = declare_refusal(
        amqp[2], lambda ch: ch.basic_consume(queue=exclusive, on_message_callback=lambda *args: None)
    )
    subscriber.close()
    # Its connection gone, the queue is gone from every node.
    gone = []
    for address in amqp:
        missing = False
        for _ in range(50):
            if declare_refusal(address, lambda ch: ch.queue_declare(queue=exclusive, passive=True)) == 404:
                missing = True
                break
            time.sleep(0.2)
        gone.append(missing)
    durable_queue = declare_refusal(amqp[2], lambda ch: ch.queue_declare(queue=queue, durable=True))
    durable_exchange = declare_refusal(
        amqp[2], lambda ch: ch.exchange_declare(exchange="tx-logs", exchange_type="fanout", durable=True)
    )
    print(
        json.dumps(
            {
                "got": got,
                "exclusive_got": exclusive_got,
                "locked": locked,
                "gone": gone,
                "durable_queue": durable_queue,
                "durable_exchange": durable_exchange,
            }
        )
    )


def owner_dies(pid):
    import os
    import signal

    owner = connect(amqp[2])
    channel = owner.channel()
    channel.exchange_declare("od-x", exchange_type="fanout", durable=True)
    exclusive = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(exclusive, "od-x")
    known = lambda: declare_refusal(  # noqa: E731
        amqp[0], lambda ch: ch.queue_declare(queue=exclusive, passive=True)
    )
    seen = False
    for _ in range(50):
        if known() == 0:
            seen = True
            break
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    gone_after = None
    while time.time() - killed < 90:
        if known() == 404:
            gone_after = round(time.time() - killed, 1)
            break
        time.sleep(0.5)
    connection = connect(amqp[0])
    channel = connection.channel()
    channel.confirm_delivery()
    started = time.time()
    channel.basic_publish("od-x", "", b"after its owner died")
    confirm_s = round(time.time() - started, 2)
    connection.close()
    print(json.dumps({"seen": seen, "gone_after_s": gone_after, "confirm_s": confirm_s}))


if phase == "publish":
    publish()
elif phase == "owner-dies":
    owner_dies(int(sys.argv[7]))
elif phase == "transient":
    transient()
elif phase == "auto-delete":
    auto_delete()
elif phase == "exchange-binding":
    exchange_binding()
else:
    consume(int(sys.argv[7]))
