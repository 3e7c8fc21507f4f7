"""pika (RabbitMQ's Python client) against wharfd's AMQP listener (issue #16).

Usage: pika_scenarios.py HOST PORT SCENARIO [ARGS...]

Each scenario asserts what RabbitMQ would do and prints one line starting with "ok" on
success; any failed assertion or client error exits non-zero with a traceback.
"""

import sys
import threading
import time

import pika

HOST, PORT, SCENARIO = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ARGS = sys.argv[4:]


def connect(**kwargs):
    params = pika.ConnectionParameters(
        host=HOST,
        port=PORT,
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        blocked_connection_timeout=30,
        **kwargs,
    )
    return pika.BlockingConnection(params)


def drain(channel, queue, count, timeout=10.0, auto_ack=True):
    """Consumes `count` messages from `queue` with basic.consume; returns them."""
    got = []
    deadline = time.time() + timeout
    for method, properties, body in channel.consume(queue, auto_ack=auto_ack, inactivity_timeout=0.5):
        if method is not None:
            got.append((method, properties, body))
            if len(got) == count:
                break
        if time.time() > deadline:
            break
    channel.cancel()
    return got


def confirms_and_properties():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("pika-props", durable=True).method.queue
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={"text": "v", "count": 7, "flag": True, "nested": {"a": 1}},
        delivery_mode=2,
        priority=3,
        correlation_id="corr-1",
        reply_to="replies",
        expiration="600000",
        message_id="m-1",
        timestamp=1700000000,
        type="order",
        app_id="tests",
    )
    for i in range(20):
        # BlockingChannel raises if the broker nacks; returns after the ack.
        ch.basic_publish("", q, b"body-%d" % i, props)
    got = drain(ch, q, 20)
    assert [body for _, _, body in got] == [b"body-%d" % i for i in range(20)], got
    _, p, _ = got[0]
    assert p.content_type == "application/json", p
    assert p.content_encoding == "utf-8", p
    assert p.headers == {"text": b"v", "count": 7, "flag": True, "nested": {"a": 1}} or p.headers == {
        "text": "v",
        "count": 7,
        "flag": True,
        "nested": {"a": 1},
    }, p.headers
    assert p.delivery_mode == 2 and p.priority == 3, p
    assert p.correlation_id == "corr-1" and p.reply_to == "replies", p
    assert p.expiration == "600000" and p.message_id == "m-1", p
    assert p.timestamp == 1700000000 and p.type == "order" and p.app_id == "tests", p
    assert got[0][0].exchange == "" and got[0][0].routing_key == q
    conn.close()
    print("ok confirms_and_properties")


def prefetch_manual_acks():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("pika-prefetch").method.queue
    for i in range(10):
        ch.basic_publish("", q, b"m%d" % i)
    ch.basic_qos(prefetch_count=3)
    held = []

    def on_message(channel, method, properties, body):
        held.append(method.delivery_tag)

    tag = ch.basic_consume(q, on_message, auto_ack=False)
    deadline = time.time() + 5
    while len(held) < 3 and time.time() < deadline:
        conn.process_data_events(time_limit=0.2)
    conn.process_data_events(time_limit=0.5)
    # The prefetch window holds: exactly 3 outstanding.
    assert len(held) == 3, held
    ch.basic_ack(held[-1], multiple=True)
    deadline = time.time() + 5
    while len(held) < 6 and time.time() < deadline:
        conn.process_data_events(time_limit=0.2)
    conn.process_data_events(time_limit=0.5)
    assert len(held) == 6, held
    assert held == sorted(held) and len(set(held)) == 6, held
    ch.basic_cancel(tag)
    conn.close()
    print("ok prefetch_manual_acks")


def exchange_types():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for name, kind in [("px-direct", "direct"), ("px-fanout", "fanout"), ("px-topic", "topic"), ("px-headers", "headers")]:
        ch.exchange_declare(name, kind)
    queues = {}
    for name in ["direct-a", "fanout-a", "fanout-b", "topic-a", "topic-b", "headers-a"]:
        queues[name] = ch.queue_declare("pq-" + name).method.queue
    ch.queue_bind(queues["direct-a"], "px-direct", "red")
    ch.queue_bind(queues["fanout-a"], "px-fanout")
    ch.queue_bind(queues["fanout-b"], "px-fanout")
    ch.queue_bind(queues["topic-a"], "px-topic", "stock.*.nyse")
    ch.queue_bind(queues["topic-b"], "px-topic", "stock.#")
    ch.queue_bind(queues["headers-a"], "px-headers", arguments={"x-match": "all", "kind": "a"})
    ch.basic_publish("px-direct", "red", b"d1")
    ch.basic_publish("px-direct", "blue", b"d-lost")
    ch.basic_publish("px-fanout", "anything", b"f1")
    ch.basic_publish("px-topic", "stock.ibm.nyse", b"t1")
    ch.basic_publish("px-topic", "stock.ibm.lse", b"t2")
    ch.basic_publish("px-headers", "", b"h1", pika.BasicProperties(headers={"kind": "a"}))
    ch.basic_publish("px-headers", "", b"h-lost", pika.BasicProperties(headers={"kind": "b"}))
    expect = {
        "direct-a": [b"d1"],
        "fanout-a": [b"f1"],
        "fanout-b": [b"f1"],
        "topic-a": [b"t1"],
        "topic-b": [b"t1", b"t2"],
        "headers-a": [b"h1"],
    }
    for name, bodies in expect.items():
        got = [body for _, _, body in drain(ch, queues[name], len(bodies), timeout=5)]
        assert got == bodies, (name, got)
        method, _, _ = ch.basic_get(queues[name], auto_ack=True)
        assert method is None, (name, "extra message")
    # Passive declare of an existing exchange works; of a missing one is 404 on the channel.
    ch.exchange_declare("px-direct", "direct", passive=True)
    try:
        ch.exchange_declare("px-missing", "direct", passive=True)
        raise AssertionError("passive declare of a missing exchange succeeded")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
    conn.close()
    print("ok exchange_types")


def mandatory_return():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("px-nowhere", "direct")
    try:
        ch.basic_publish("px-nowhere", "no-binding", b"lost", mandatory=True)
        raise AssertionError("an unroutable mandatory message was not returned")
    except pika.exceptions.UnroutableError as error:
        returned = error.messages[0]
        assert returned.method.reply_code == 312, returned.method
        assert returned.method.reply_text == "NO_ROUTE", returned.method
        assert returned.body == b"lost", returned
    conn.close()
    print("ok mandatory_return")


def pipelined_publishes():
    """Publishes a client sends without waiting (no confirms: pika's blocking channel
    writes them straight out) arrive together; each is handled as if alone: stored in
    order, an unroutable mandatory one among them returned with its own body, a basic.get
    right behind them sees all of them, and a publish to a missing exchange after them
    closes the channel (404) without losing the ones before it."""
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare("pika-pipelined", durable=True).method.queue
    returned = []
    ch.add_on_return_callback(lambda _ch, method, _props, body: returned.append((method.reply_code, body)))
    for i in range(500):
        ch.basic_publish("", q, b"m%03d" % i)
        if i == 250:
            ch.basic_publish("", "pika-no-such-queue", b"back to me", mandatory=True)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m000", (method, body)
    assert method.message_count == 499, method
    got = [body] + [b for _, _, b in drain(ch, q, 499)]
    assert got == [b"m%03d" % i for i in range(500)], got[:5]
    conn.process_data_events(time_limit=0.2)
    assert returned == [(312, b"back to me")], returned
    for i in range(10):
        ch.basic_publish("", q, b"before %d" % i)
    try:
        ch.basic_publish("pika-no-such-exchange", "k", b"refused")
        ch.queue_declare(q, passive=True)
        raise AssertionError("a publish to a missing exchange did not close the channel")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
    ch = conn.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 10
    conn.close()
    print("ok pipelined_publishes")


def nack_requeue_reject():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("pika-nack").method.queue
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, b"two")
    ch.basic_qos(prefetch_count=10)
    first = drain(ch, q, 2, auto_ack=False)
    assert [body for _, _, body in first] == [b"one", b"two"], first
    # The consumer is cancelled (drain ends with basic.cancel): as RabbitMQ, what it
    # delivered stays unacknowledged on the channel, neither ready nor redelivered.
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    time.sleep(0.3)
    assert ch.basic_get(q)[0] is None
    (m1, _, b1), (m2, _, b2) = first
    ch.basic_nack(m1.delivery_tag, requeue=True)
    ch.basic_reject(m2.delivery_tag, requeue=False)
    again = []
    for method, _, body in ch.consume(q, auto_ack=False, inactivity_timeout=1):
        if method is None:
            break
        again.append((method, body))
    assert [body for _, body in again] == [b1], again
    assert again[0][0].redelivered
    # Cancelled while holding it, the delivery returns when its channel closes.
    ch.cancel()
    ch.close()
    ch = conn.channel()
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b1 and method.redelivered, (method, body)
    conn.close()
    print("ok nack_requeue_reject")


def no_ack_cancel_delivers_once():
    """A no-ack consumer cancelled as soon as it has its messages: what was pushed to it is
    settled, never put back in the queue, so no message reaches a client twice. (The race
    this guards against, a cancel handled between a push and its settle, shows under load:
    many short rounds.)"""
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("no-ack-cancel").method.queue
    ch.queue_purge(q)
    for round in range(300):
        bodies = [b"r%d-%d" % (round, i) for i in range(3)]
        for body in bodies:
            ch.basic_publish("", q, body)
        got = [body for _, _, body in drain(ch, q, len(bodies), timeout=5)]
        assert got == bodies, ("round", round, got)
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert method is None, ("round", round, body, "delivered twice")
    conn.close()
    print("ok no_ack_cancel_delivers_once")


def basic_get():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("pika-get").method.queue
    method, _, _ = ch.basic_get(q)
    assert method is None, method
    ch.basic_publish("", q, b"g1", pika.BasicProperties(headers={"h": "v"}))
    ch.basic_publish("", q, b"g2")
    method, properties, body = ch.basic_get(q, auto_ack=False)
    assert body == b"g1" and method.message_count == 1, (method, body)
    assert properties.headers == {"h": b"v"} or properties.headers == {"h": "v"}, properties
    ch.basic_ack(method.delivery_tag)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"g2" and method.message_count == 0, (method, body)
    method, _, _ = ch.basic_get(q)
    assert method is None
    # A got message nacked with requeue returns at its place, redelivered; one held when
    # its channel closes returns too; neither makes the getter a consumer.
    for body in (b"g3", b"g4"):
        ch.basic_publish("", q, body)
    method, _, body = ch.basic_get(q)
    assert body == b"g3" and not method.redelivered, (method, body)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q)
    assert body == b"g3" and method.redelivered, (method, body)
    ch.close()
    ch = conn.channel()
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"g3" and method.redelivered and method.message_count == 1, (method, body)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"g4" and not method.redelivered, (method, body)
    conn.close()
    print("ok basic_get")


def server_named_exclusive():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    assert q.startswith("amq.gen-"), q
    ch.basic_publish("", q, b"mine")
    got = drain(ch, q, 1)
    assert got[0][2] == b"mine"
    # Another connection cannot use it: 405 RESOURCE_LOCKED.
    other = connect()
    och = other.channel()
    try:
        och.queue_declare(q, passive=True)
        raise AssertionError("another connection saw the exclusive queue")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 405, error
    other.close()
    conn.close()
    # It died with its connection.
    third = connect()
    tch = third.channel()
    try:
        tch.queue_declare(q, passive=True)
        raise AssertionError("the exclusive queue outlived its connection")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
    third.close()
    print("ok server_named_exclusive")


def channel_error_keeps_connection():
    conn = connect()
    ch = conn.channel()
    try:
        ch.queue_declare("pika-no-such-queue", passive=True)
        raise AssertionError("passive declare of a missing queue succeeded")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
        assert error.reply_text == "NOT_FOUND - no queue 'pika-no-such-queue' in vhost '/'", error
    assert conn.is_open
    ch2 = conn.channel()
    ch2.queue_declare("pika-after-error")
    ch2.queue_delete("pika-after-error")
    conn.close()
    print("ok channel_error_keeps_connection")


def publish(queue, count):
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue, durable=True)
    for i in range(int(count)):
        ch.basic_publish("", queue, b"durable-%d" % i, pika.BasicProperties(delivery_mode=2, headers={"n": str(i)}))
        print("confirmed", i, flush=True)
    conn.close()
    print("ok publish")


def consume(queue, count):
    conn = connect()
    ch = conn.channel()
    got = drain(ch, queue, int(count), timeout=20)
    for method, properties, body in got:
        headers = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in (properties.headers or {}).items()}
        print("message", body.decode(), headers.get("n", ""), method.exchange, method.routing_key, flush=True)
    conn.close()
    print("ok consume")


def wrong_vhost():
    try:
        connect(virtual_host="other")
        raise AssertionError("vhost other was accepted")
    except pika.exceptions.ProbableAccessDeniedError:
        pass
    except pika.exceptions.ConnectionClosedByBroker as error:
        assert error.reply_code == 530, error
    print("ok wrong_vhost")


def bad_login():
    params = pika.ConnectionParameters(host=HOST, port=PORT, credentials=pika.PlainCredentials("guest", "wrong"), connection_attempts=1)
    try:
        pika.BlockingConnection(params)
        raise AssertionError("a wrong password was accepted")
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError):
        pass
    print("ok bad_login")


def death_of(properties):
    headers = properties.headers or {}
    deaths = headers.get("x-death")
    assert isinstance(deaths, list) and len(deaths) == 1, headers
    death = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in deaths[0].items()}
    first = headers.get("x-first-death-reason")
    first = first.decode() if isinstance(first, bytes) else first
    assert first == death["reason"], headers
    return death


def dead_lettering():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("dlx", "direct")
    dead = ch.queue_declare("dl-dead").method.queue
    for reason in ["rejected", "expired", "maxlen", "delivery_limit", "message_ttl"]:
        ch.queue_bind(dead, "dlx", reason)
    common = {"x-dead-letter-exchange": "dlx"}
    ch.queue_declare("dl-rejected", arguments=dict(common, **{"x-dead-letter-routing-key": "rejected"}))
    ch.queue_declare("dl-expired", arguments=dict(common, **{"x-dead-letter-routing-key": "expired", "x-message-ttl": 50}))
    ch.queue_declare("dl-message-ttl", arguments=dict(common, **{"x-dead-letter-routing-key": "message_ttl"}))
    ch.queue_declare("dl-maxlen", arguments=dict(common, **{"x-dead-letter-routing-key": "maxlen", "x-max-length": 1, "x-overflow": "drop-head"}))
    ch.queue_declare("dl-limit", durable=True, arguments=dict(common, **{"x-dead-letter-routing-key": "delivery_limit", "x-queue-type": "quorum", "x-delivery-limit": 1}))

    ch.basic_publish("", "dl-rejected", b"r", pika.BasicProperties(headers={"keep": "me", "n": 5}))
    method, _, _ = ch.basic_get("dl-rejected")
    ch.basic_reject(method.delivery_tag, requeue=False)

    ch.basic_publish("", "dl-expired", b"e")
    ch.basic_publish("", "dl-message-ttl", b"m", pika.BasicProperties(expiration="50"))
    ch.basic_publish("", "dl-maxlen", b"first")
    ch.basic_publish("", "dl-maxlen", b"second")

    ch.basic_publish("", "dl-limit", b"poison")
    ch.basic_qos(prefetch_count=1)
    nacks = 0
    for method, _, body in ch.consume("dl-limit", auto_ack=False, inactivity_timeout=1):
        if method is None:
            break
        ch.basic_nack(method.delivery_tag, requeue=True)
        nacks += 1
        if nacks > 5:
            break
    ch.cancel()

    got = {}
    deadline = time.time() + 15
    while len(got) < 5 and time.time() < deadline:
        method, properties, body = ch.basic_get(dead, auto_ack=True)
        if method is None:
            time.sleep(0.1)
            continue
        got[method.routing_key] = (properties, body)
    assert sorted(got) == ["delivery_limit", "expired", "maxlen", "message_ttl", "rejected"], sorted(got)
    properties, body = got["rejected"]
    death = death_of(properties)
    assert body == b"r" and death["reason"] == "rejected" and death["queue"] == "dl-rejected", death
    assert death["count"] == 1 and death["exchange"] == "", death
    assert [key.decode() if isinstance(key, bytes) else key for key in death["routing-keys"]] == ["dl-rejected"], death
    headers = properties.headers
    assert headers.get("n") == 5 and headers.get("keep") in ("me", b"me"), headers
    assert death_of(got["expired"][0])["reason"] == "expired"
    death = death_of(got["message_ttl"][0])
    assert death["reason"] == "expired" and death["original-expiration"] == "50", death
    assert got["message_ttl"][0].expiration is None, got["message_ttl"][0]
    properties, body = got["maxlen"]
    assert body == b"first" and death_of(properties)["reason"] == "maxlen"
    properties, body = got["delivery_limit"]
    assert body == b"poison" and death_of(properties)["reason"] == "delivery_limit", (nacks, properties)
    conn.close()
    print("ok dead_lettering", nacks)


def dead_letter_counts_when_republished():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("retry-dlx", "fanout")
    dead = ch.queue_declare("retry-dead").method.queue
    ch.queue_bind(dead, "retry-dlx")
    work = ch.queue_declare("retry-work", arguments={"x-dead-letter-exchange": "retry-dlx"}).method.queue
    ch.basic_publish("", work, b"flaky", pika.BasicProperties(headers={"attempt": "1"}))
    for attempt in (1, 2, 3):
        method, _, _ = ch.basic_get(work)
        ch.basic_reject(method.delivery_tag, requeue=False)
        died = None
        deadline = time.time() + 5
        while died is None and time.time() < deadline:
            method, properties, body = ch.basic_get(dead, auto_ack=True)
            if method is None:
                time.sleep(0.05)
            else:
                died = (properties, body)
        assert died is not None, "not dead-lettered on attempt %d" % attempt
        properties, body = died
        deaths = properties.headers["x-death"]
        assert len(deaths) == 1, deaths
        death = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in deaths[0].items()}
        # The same queue and reason count up, as RabbitMQ does for a message a client
        # republished with its headers (the usual retry loop).
        assert death["count"] == attempt and death["queue"] == "retry-work", death
        assert death["reason"] == "rejected", death
        first = properties.headers["x-first-death-queue"]
        assert (first.decode() if isinstance(first, bytes) else first) == "retry-work", properties.headers
        if attempt < 3:
            ch.basic_publish("", work, body, pika.BasicProperties(headers=properties.headers))
    conn.close()
    print("ok dead_letter_counts_when_republished")


def refused_arguments():
    conn = connect()
    for arguments, text in [
        ({"x-queue-type": "stream"}, "stream"),
        ({"x-dead-letter-strategy": "at-least-once"}, "x-dead-letter-strategy"),
    ]:
        ch = conn.channel()
        try:
            ch.queue_declare("refused-args", durable=True, arguments=arguments)
            raise AssertionError("accepted %r" % arguments)
        except pika.exceptions.ChannelClosedByBroker as error:
            assert error.reply_code == 406 and text in error.reply_text, error
    ch = conn.channel()
    ch.queue_declare("typed-quorum", durable=True, arguments={"x-queue-type": "quorum"})
    conn.close()
    print("ok refused_arguments")


def exchange_to_exchange(mode=""):
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("e2e-src", "topic", durable=True)
    ch.exchange_declare("e2e-mid", "fanout", durable=True)
    ch.exchange_declare("e2e-leaf", "headers", durable=True)
    near = ch.queue_declare("e2e-near", durable=True).method.queue
    far = ch.queue_declare("e2e-far", durable=True).method.queue
    ch.exchange_bind("e2e-mid", "e2e-src", "a.#")
    ch.queue_bind(near, "e2e-mid")
    ch.exchange_bind("e2e-leaf", "e2e-mid")
    ch.queue_bind(far, "e2e-leaf", arguments={"x-match": "all", "kind": "x"})
    # A cycle back to the source: each queue still gets one copy.
    ch.exchange_bind("e2e-src", "e2e-leaf", arguments={"x-match": "any", "kind": "x"})
    ch.basic_publish("e2e-src", "a.b", b"both", pika.BasicProperties(headers={"kind": "x"}))
    ch.basic_publish("e2e-src", "a.b", b"near-only", pika.BasicProperties(headers={"kind": "y"}))
    try:
        ch.basic_publish("e2e-src", "b.c", b"nowhere", mandatory=True)
        raise AssertionError("unroutable message confirmed without a return")
    except pika.exceptions.UnroutableError:
        pass
    time.sleep(0.2)
    assert ch.queue_declare(near, passive=True).method.message_count == 2
    assert ch.queue_declare(far, passive=True).method.message_count == 1
    assert ch.basic_get(far, auto_ack=True)[2] == b"both"
    ch.exchange_unbind("e2e-mid", "e2e-src", "a.#")
    try:
        ch.basic_publish("e2e-src", "a.b", b"unbound", mandatory=True)
        raise AssertionError("routed through a removed binding")
    except pika.exceptions.UnroutableError:
        pass
    if mode != "keep":
        for queue in (near, far):
            ch.queue_delete(queue)
        for exchange in ("e2e-src", "e2e-mid", "e2e-leaf"):
            ch.exchange_delete(exchange)
    else:
        ch.exchange_bind("e2e-mid", "e2e-src", "a.#")
    try:
        ch.exchange_bind("e2e-mid", "", "x")
        raise AssertionError("binding to the default exchange accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 403, error
    ch = conn.channel()
    try:
        ch.exchange_bind("e2e-nowhere", "amq.direct", "x")
        raise AssertionError("binding a missing exchange accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
    conn.close()
    print("ok exchange_to_exchange")


def exchange_to_exchange_routes():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("e2e-src", "a.b", b"after", pika.BasicProperties(headers={"kind": "x"}))
    time.sleep(0.2)
    assert ch.queue_declare("e2e-near", passive=True).method.message_count == 3
    assert ch.queue_declare("e2e-far", passive=True).method.message_count == 1
    conn.close()
    print("ok exchange_to_exchange_routes")


def consumer_priorities():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("prio-q").method.queue
    got = {"low": [], "high": []}
    held = []

    def on(name):
        def callback(channel, method, properties, body):
            got[name].append(body)
            held.append(method.delivery_tag)
        return callback

    ch.basic_qos(prefetch_count=10)
    ch.basic_consume(q, on("low"), arguments={"x-priority": 1})
    ch.basic_qos(prefetch_count=2)
    ch.basic_consume(q, on("high"), arguments={"x-priority": 10})
    for index in range(5):
        ch.basic_publish("", q, b"m%d" % index)
    deadline = time.time() + 5
    while len(held) < 5 and time.time() < deadline:
        conn.process_data_events(0.1)
    # The high-priority consumer takes what its window holds; the rest goes lower.
    assert got == {"high": [b"m0", b"m1"], "low": [b"m2", b"m3", b"m4"]}, got
    ch.basic_ack(0, multiple=True)
    try:
        ch.basic_consume(q, on("low"), arguments={"x-priority": "high"})
        conn.process_data_events(0.5)
        raise AssertionError("a non-integer x-priority accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406, error
    conn.close()
    print("ok consumer_priorities")


def queue_expires():
    conn = connect()
    ch = conn.channel()
    # Margins of about 0.7 s either way, for a loaded machine.
    q = ch.queue_declare("expiring", arguments={"x-expires": 1500}).method.queue
    ch.basic_publish("", q, b"publishing does not count as use")
    # A redeclare counts as use, and so does a consumer for as long as it stays.
    time.sleep(0.8)
    ch.queue_declare(q, arguments={"x-expires": 1500})
    time.sleep(0.8)
    tag = ch.basic_consume(q, lambda *_: None, auto_ack=True)
    time.sleep(2.2)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(tag)
    time.sleep(0.3)
    ch.queue_declare(q, passive=True)
    time.sleep(2.5)
    try:
        ch.queue_declare(q, passive=True)
        raise AssertionError("unused queue outlived its x-expires")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
    ch = conn.channel()
    try:
        ch.queue_declare("expires-zero", arguments={"x-expires": 0})
        raise AssertionError("x-expires 0 accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406, error
    conn.close()
    print("ok queue_expires")


def redeclare_and_delete_preconditions():
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("typed-classic", durable=True, arguments={"x-queue-type": "classic"})
    # An existing queue redeclared with other arguments: 406 PRECONDITION_FAILED.
    try:
        ch.queue_declare("typed-classic", durable=True, arguments={"x-max-length": 5})
        raise AssertionError("inequivalent redeclare accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406, error
    ch = conn.channel()
    ch.exchange_declare("typed-x", "direct")
    try:
        ch.exchange_declare("typed-x", "fanout")
        raise AssertionError("exchange redeclared with another type")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406 and "inequivalent arg 'type'" in error.reply_text, error
    # The durability is compared too (pika's exchange_declare is durable=False by default);
    # an equal redeclare, of a built-in exchange too, is accepted.
    ch = conn.channel()
    ch.exchange_declare("typed-x", "direct")
    ch.exchange_declare("amq.topic", "topic", durable=True)
    try:
        ch.exchange_declare("typed-x", "direct", durable=True)
        raise AssertionError("a transient exchange redeclared as durable")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406, error
        assert (
            "inequivalent arg 'durable' for exchange 'typed-x' in vhost '/': "
            "received 'true' but current is 'false'" in error.reply_text
        ), error
    # The default exchange cannot be declared, as RabbitMQ: 403 ACCESS_REFUSED.
    ch = conn.channel()
    try:
        ch.exchange_declare("", "direct", durable=True)
        raise AssertionError("the default exchange was declared")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 403, error
    ch = conn.channel()
    ch.queue_declare("del-me")
    ch.basic_publish("", "del-me", b"x")
    time.sleep(0.2)
    try:
        ch.queue_delete("del-me", if_empty=True)
        raise AssertionError("if-empty delete of a non-empty queue")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406, error
    ch = conn.channel()
    assert ch.queue_purge("del-me").method.message_count == 1
    ch.queue_delete("del-me", if_empty=True)
    conn.close()
    print("ok redeclare_and_delete_preconditions")


def delayed_exchange():
    conn = connect()
    ch = conn.channel()
    try:
        ch.exchange_declare("delayed-untyped", "x-delayed-message")
        raise AssertionError("x-delayed-message without x-delayed-type accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406 and "x-delayed-type" in error.reply_text, error
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("delayed", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    q = ch.queue_declare("delayed-q").method.queue
    ch.queue_bind(q, "delayed", "k")
    started = time.time()
    ch.basic_publish("delayed", "k", b"later", pika.BasicProperties(headers={"x-delay": 800}))
    ch.basic_publish("delayed", "k", b"now")
    # A negative delay is no delay, as the plugin treats it.
    ch.basic_publish("delayed", "k", b"negative", pika.BasicProperties(headers={"x-delay": -5}))
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"now", body
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"negative", body
    assert ch.basic_get(q)[0] is None, "delayed message delivered early"
    got = None
    while got is None and time.time() - started < 10:
        time.sleep(0.05)
        method, properties, body = ch.basic_get(q, auto_ack=True)
        if method is not None:
            got = (time.time() - started, properties, body)
    assert got is not None, "delayed message never delivered"
    waited, properties, body = got
    assert body == b"later" and 0.7 <= waited, got
    assert properties.headers == {"x-delay": 800}, properties.headers
    conn.close()
    print("ok delayed_exchange")


def transactions():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare("tx-q").method.queue
    ch.tx_select()
    ch.basic_publish("", q, b"rolled-back")
    ch.tx_rollback()
    ch.basic_publish("", q, b"t1")
    ch.basic_publish("", q, b"t2", pika.BasicProperties(headers={"n": 2}))
    ch.basic_publish("", "tx-nowhere", b"lost", mandatory=True)
    other = conn.channel()
    assert other.queue_declare(q, passive=True).method.message_count == 0
    returned = []
    ch.add_on_return_callback(lambda _ch, method, _props, body: returned.append((method.reply_code, body)))
    ch.tx_commit()
    conn.process_data_events(0.2)
    assert returned == [(312, b"lost")], returned
    assert other.queue_declare(q, passive=True).method.message_count == 2
    # Acks in a transaction wait for the commit; rolled back, they never happen.
    method, _, body = ch.basic_get(q)
    assert body == b"t1", body
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()
    assert other.queue_declare(q, passive=True).method.message_count == 1
    ch.basic_ack(method.delivery_tag)
    method, properties, body = ch.basic_get(q)
    assert body == b"t2" and properties.headers == {"n": 2}, (body, properties)
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.tx_commit()
    ch.close()
    assert other.queue_declare(q, passive=True).method.message_count == 0
    try:
        other.confirm_delivery()
        other.tx_select()
        raise AssertionError("tx.select on a confirm channel accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406, error
    ch = conn.channel()
    try:
        ch.tx_commit()
        raise AssertionError("tx.commit without tx.select accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406 and "not transactional" in error.reply_text, error
    conn.close()
    print("ok transactions")


def overflow_reject_publish():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("full-q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"}).method.queue
    ch.basic_publish("", q, b"fits")
    try:
        ch.basic_publish("", q, b"refused")
        raise AssertionError("publish to a full reject-publish queue confirmed")
    except pika.exceptions.NackError:
        pass
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"fits" and method.message_count == 0, (method, body)
    ch.basic_publish("", q, b"room-again")
    # reject-publish-dlx: refused as well, and dead-lettered with reason maxlen.
    ch.exchange_declare("full-dlx", "fanout")
    dead = ch.queue_declare("full-dead").method.queue
    ch.queue_bind(dead, "full-dlx")
    arguments = {"x-max-length": 1, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": "full-dlx"}
    q = ch.queue_declare("full-dlx-q", arguments=arguments).method.queue
    ch.basic_publish("", q, b"fits")
    try:
        ch.basic_publish("", q, b"refused", pika.BasicProperties(headers={"k": "v"}))
        raise AssertionError("publish to a full reject-publish-dlx queue confirmed")
    except pika.exceptions.NackError:
        pass
    died = None
    deadline = time.time() + 5
    while died is None and time.time() < deadline:
        method, properties, body = ch.basic_get(dead, auto_ack=True)
        if method is None:
            time.sleep(0.05)
        else:
            died = (properties, body)
    assert died is not None, "refused message not dead-lettered"
    properties, body = died
    death = death_of(properties)
    assert body == b"refused" and death["reason"] == "maxlen" and death["queue"] == "full-dlx-q", death
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    conn.close()
    print("ok overflow_reject_publish")


def max_length_bytes():
    """x-max-length-bytes counts the bodies of ready messages, as RabbitMQ does: drop-head
    dead-letters the oldest to make room, reject-publish nacks what does not fit."""
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("bytes-dlx", "fanout")
    dead = ch.queue_declare("bytes-dead").method.queue
    ch.queue_bind(dead, "bytes-dlx")
    arguments = {"x-max-length-bytes": 25, "x-dead-letter-exchange": "bytes-dlx"}
    q = ch.queue_declare("bytes-q", durable=True, arguments=arguments).method.queue
    for body in [b"0123456789", b"abcdefghij", b"ABCDEFGHIJ"]:
        ch.basic_publish("", q, body)
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    got = [body for _, _, body in drain(ch, q, 2)]
    assert got == [b"abcdefghij", b"ABCDEFGHIJ"], got
    deadline = time.time() + 5
    died = None
    while died is None and time.time() < deadline:
        method, properties, body = ch.basic_get(dead, auto_ack=True)
        if method is None:
            time.sleep(0.05)
        else:
            died = (properties, body)
    assert died is not None and died[1] == b"0123456789", died
    assert death_of(died[0])["reason"] == "maxlen", death_of(died[0])
    arguments = {"x-max-length-bytes": 25, "x-overflow": "reject-publish"}
    q = ch.queue_declare("bytes-reject-q", arguments=arguments).method.queue
    ch.basic_publish("", q, b"0123456789")
    ch.basic_publish("", q, b"abcdefghij")
    try:
        ch.basic_publish("", q, b"ABCDEFGHIJ")
        raise AssertionError("publish past x-max-length-bytes confirmed")
    except pika.exceptions.NackError:
        pass
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    conn.close()
    print("ok max_length_bytes")


def disk_alarm():
    """The broker's disk alarm, as RabbitMQ's: a publisher filling the disk past the free-space
    limit gets connection.blocked and its publish is held (not failed, not lost); once space
    is freed (another connection deletes the queue) it gets connection.unblocked and the held
    publish completes. pika's blocking adapter runs the blocked callbacks only between its
    own calls, so the freeing thread watches for the publishes to stall instead."""
    blocked, unblocked = threading.Event(), threading.Event()
    publisher = connect()
    publisher.add_on_connection_blocked_callback(lambda _connection, _method: blocked.set())
    publisher.add_on_connection_unblocked_callback(lambda _connection, _method: unblocked.set())
    ch = publisher.channel()
    ch.confirm_delivery()
    ch.queue_declare("filler", durable=True)
    admin = connect()
    progress, freed = [0], []

    def free_when_stalled():
        last, stalled_since, deadline = -1, None, time.time() + 120
        while time.time() < deadline:
            time.sleep(0.2)
            if progress[0] != last:
                last, stalled_since = progress[0], None
            elif stalled_since is None:
                stalled_since = time.time()
            elif time.time() - stalled_since > 2:
                admin.channel().queue_delete("filler")
                freed.append(progress[0])
                return

    freer = threading.Thread(target=free_when_stalled)
    freer.start()
    body = b"x" * (512 * 1024)
    sent = 0
    while not freed and sent < 400:
        ch.basic_publish("", "filler", body)
        sent += 1
        progress[0] = sent
    deadline = time.time() + 30
    while not unblocked.is_set() and time.time() < deadline:
        publisher.process_data_events(time_limit=0.2)
    freer.join(5)
    assert freed, "publishes never stalled (%d sent)" % sent
    assert blocked.is_set(), "the stalled publisher was not told connection.blocked"
    assert unblocked.is_set(), "never unblocked after the space was freed"
    # Publishing goes on as before.
    ch.queue_declare("after-alarm")
    ch.basic_publish("", "after-alarm", b"room again")
    method, _, body = ch.basic_get("after-alarm", auto_ack=True)
    assert body == b"room again", (method, body)
    admin.close()
    publisher.close()
    print("ok disk_alarm after %d publishes" % sent)


def memory_alarm(config_path, pid, http):
    """The broker's memory alarm, as RabbitMQ's: with the watermark lowered below what the
    broker uses (here by rewriting wharfd's config file and sending it SIGHUP, where
    RabbitMQ has `rabbitmqctl set_vm_memory_high_watermark`), a publisher gets
    connection.blocked with reason "low on memory" and its confirmed publish is held (not
    failed, not lost) while a consumer on another connection still gets its messages; once
    the watermark is raised again it gets connection.unblocked and every publish lands.

    The alarm is lifted once the broker's own gauge (`wharf_memory_alarm` on `http`'s
    /metrics) says it is on and publishes have stalled for a second: a stall alone is no
    proof (a confirm can take seconds on a loaded machine, and a stall that was not the
    alarm's lifted it before it was on, so no connection.blocked came)."""
    import os
    import signal
    import urllib.request

    def alarm_on():
        with urllib.request.urlopen("http://%s/metrics" % http, timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith("wharf_memory_alarm "):
                    return float(line.split()[1]) == 1
        raise AssertionError("no wharf_memory_alarm in /metrics")

    def set_watermark(watermark_bytes):
        with open(config_path, "w") as config:
            config.write("memory_high_watermark_bytes = %d\n" % watermark_bytes)
        os.kill(int(pid), signal.SIGHUP)

    reasons, unblocked = [], threading.Event()
    publisher = connect()
    publisher.add_on_connection_blocked_callback(
        lambda _connection, method: reasons.append(method.method.reason)
    )
    publisher.add_on_connection_unblocked_callback(lambda _connection, _method: unblocked.set())
    ch = publisher.channel()
    ch.confirm_delivery()
    ch.queue_declare("mem-held", durable=True)
    ch.queue_declare("mem-drain", durable=True)
    persistent = pika.BasicProperties(delivery_mode=2)
    ch.basic_publish("", "mem-drain", b"before the alarm", properties=persistent)
    set_watermark(1)
    progress, lifted, drained = [0], [], []

    def lift_when_stalled():
        last, stalled_since, deadline = -1, None, time.time() + 60
        while time.time() < deadline:
            time.sleep(0.2)
            if progress[0] != last:
                last, stalled_since = progress[0], None
            elif stalled_since is None:
                stalled_since = time.time()
            elif time.time() - stalled_since > 1 and alarm_on():
                # Consumers go on while publishers are held.
                consumer = connect()
                method, _, body = consumer.channel().basic_get("mem-drain", auto_ack=True)
                drained.append(body)
                consumer.close()
                lifted.append(progress[0])
                set_watermark(0)
                return

    lifter = threading.Thread(target=lift_when_stalled)
    lifter.start()
    sent = 0
    while not lifted and sent < 100000:
        ch.basic_publish("", "mem-held", b"m%d" % sent, properties=persistent)
        sent += 1
        progress[0] = sent
    deadline = time.time() + 30
    while not unblocked.is_set() and time.time() < deadline:
        publisher.process_data_events(time_limit=0.2)
    lifter.join(5)
    assert lifted, "publishes never stalled (%d sent)" % sent
    assert reasons == ["low on memory"], reasons
    assert unblocked.is_set(), "never unblocked after the watermark was raised"
    assert drained == [b"before the alarm"], drained
    # Every publish was confirmed and stored: the held one too.
    assert ch.queue_declare("mem-held", passive=True).method.message_count == sent
    ch.basic_publish("", "mem-held", b"after", properties=persistent)
    publisher.close()
    print("ok memory_alarm after %d publishes" % sent)


def single_active_consumer_and_cancel_notify():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("sac-q", arguments={"x-single-active-consumer": True}).method.queue
    got = {"first": [], "second": []}
    first = ch.basic_consume(q, lambda c, m, p, b: got["first"].append(b), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got["second"].append(b), auto_ack=True)
    for index in range(4):
        ch.basic_publish("", q, b"m%d" % index)
    deadline = time.time() + 5
    while len(got["first"]) + len(got["second"]) < 4 and time.time() < deadline:
        conn.process_data_events(0.1)
    assert got == {"first": [b"m0", b"m1", b"m2", b"m3"], "second": []}, got
    ch.basic_cancel(first)
    ch.basic_publish("", q, b"m4")
    deadline = time.time() + 5
    while not got["second"] and time.time() < deadline:
        conn.process_data_events(0.1)
    assert got["second"] == [b"m4"], got
    # The queue deleted under a consumer: the broker cancels it (consumer_cancel_notify).
    cancelled = []
    ch.add_on_cancel_callback(lambda method: cancelled.append(method.method.consumer_tag))
    other = conn.channel()
    other.queue_delete(q)
    deadline = time.time() + 5
    while not cancelled and time.time() < deadline:
        conn.process_data_events(0.1)
    assert len(cancelled) == 1, cancelled
    conn.close()
    print("ok single_active_consumer_and_cancel_notify")


def channel_flow():
    conn = connect()
    ch = conn.channel()
    ch.flow(True)
    try:
        ch.flow(False)
        raise AssertionError("channel.flow active=false accepted")
    except (pika.exceptions.ConnectionClosedByBroker, pika.exceptions.ChannelClosedByBroker) as error:
        assert isinstance(error, pika.exceptions.ConnectionClosedByBroker), error
        assert error.reply_code == 540, error
    # pika 1.x has no `immediate` argument: the method is sent through its channel.
    conn = connect()
    ch = conn.channel()
    ch._impl._send_method(
        pika.spec.Basic.Publish(exchange="", routing_key="nowhere", immediate=True),
        (pika.BasicProperties(), b"now or never"),
    )
    try:
        conn.process_data_events(2)
        ch.queue_declare("after-immediate")
        raise AssertionError("basic.publish immediate=true accepted")
    except pika.exceptions.ConnectionClosedByBroker as error:
        assert error.reply_code == 540 and "immediate" in error.reply_text, error
    print("ok channel_flow")


def metrics_traffic(count):
    """Known AMQP traffic for the /metrics test: `count` publishes (two with a body in
    several frames) to a new queue, one basic.get, then a passive declare of a missing queue,
    which the broker answers by closing the channel with 404 NOT_FOUND."""
    count = int(count)
    connection = connect(frame_max=4096)
    channel = connection.channel()
    channel.queue_declare("metrics-q")
    for index in range(count):
        body = b"x" * (10_000 if index < 2 else 10)
        channel.basic_publish("", "metrics-q", body)
    method, _properties, body = channel.basic_get("metrics-q", auto_ack=True)
    assert method is not None and len(body) == 10_000, (method, len(body))
    try:
        channel.queue_declare("metrics-missing", passive=True)
        raise AssertionError("a passive declare of a missing queue must fail")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404, error
    connection.close()
    print("ok metrics_traffic")


def priority_queue():
    """x-max-priority as RabbitMQ's classic queues: higher priorities first, FIFO within one,
    no priority is 0, above the max counts as the max; a requeued message keeps its place;
    drop-head drops the head (the highest priority's oldest), even the newcomer; an
    x-max-priority above 255 is refused."""
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("msg-prio-q", durable=True, arguments={"x-max-priority": 5}).method.queue
    published = [("none", None), ("a3", 3), ("nine", 9), ("b3", 3), ("five", 5), ("one", 1)]
    for body, priority in published:
        ch.basic_publish("", q, body.encode(), pika.BasicProperties(priority=priority))
    assert ch.queue_declare(q, passive=True).method.message_count == 6
    # The head, got and requeued, comes back first and redelivered.
    method, properties, body = ch.basic_get(q, auto_ack=False)
    assert body == b"nine" and properties.priority == 9, (body, properties)
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q, auto_ack=False)
    assert body == b"nine" and method.redelivered, (body, method)
    ch.basic_reject(method.delivery_tag, requeue=True)
    ch.basic_qos(prefetch_count=1)
    got = []
    for method, properties, body in ch.consume(q, inactivity_timeout=5):
        assert method is not None, "timed out after %r" % got
        got.append((body.decode(), properties.priority))
        ch.basic_ack(method.delivery_tag)
        if len(got) == 6:
            break
    ch.cancel()
    expected = [("nine", 9), ("five", 5), ("a3", 3), ("b3", 3), ("one", 1), ("none", None)]
    assert got == expected, got

    ch.exchange_declare("prio-dlx", "fanout")
    dead = ch.queue_declare("prio-dead").method.queue
    ch.queue_bind(dead, "prio-dlx")
    arguments = {"x-max-priority": 9, "x-max-length": 2, "x-dead-letter-exchange": "prio-dlx"}
    full = ch.queue_declare("prio-full", arguments=arguments).method.queue
    for body, priority in [("low-a", 1), ("high", 5), ("low-b", 1), ("top", 7)]:
        ch.basic_publish("", full, body.encode(), pika.BasicProperties(priority=priority))
    left = [body for _, _, body in drain(ch, full, 2)]
    assert left == [b"low-a", b"low-b"], left
    died = []
    deadline = time.time() + 5
    while len(died) < 2 and time.time() < deadline:
        method, properties, body = ch.basic_get(dead, auto_ack=True)
        if method is None:
            time.sleep(0.05)
        else:
            died.append(body)
            assert death_of(properties)["reason"] == "maxlen", properties
    assert died == [b"high", b"top"], died

    try:
        ch.queue_declare("prio-too-high", arguments={"x-max-priority": 256})
        raise AssertionError("x-max-priority 256 accepted")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406, error
    conn.close()
    print("ok priority_queue")


def priority_order(queue, mode, *bodies):
    """`declare`: declares a durable queue with x-max-priority 9 and, if bodies are given,
    publishes each `BODY:PRIORITY` (`-` for none). `check`: consumes len(bodies) messages and
    asserts they come in the order given (a restart or another protocol in between)."""
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue, durable=True, arguments={"x-max-priority": 9})
    if mode == "declare":
        for item in bodies:
            body, priority = item.split(":")
            priority = None if priority == "-" else int(priority)
            ch.basic_publish("", queue, body.encode(), pika.BasicProperties(priority=priority))
    else:
        got = [body.decode() for _, _, body in drain(ch, queue, len(bodies))]
        assert got == list(bodies), got
    conn.close()
    print("ok priority_order", mode)


def wait_for(conn, condition, timeout=5.0):
    """Processes events until `condition()` holds (or the timeout), then half a second more
    so that a delivery beyond a limit would show."""
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        conn.process_data_events(time_limit=0.1)
    conn.process_data_events(time_limit=0.5)


def global_prefetch():
    """basic.qos with global=true: one window for the channel's consumers together (RabbitMQ
    3.x), whatever their queues; with a per-consumer prefetch too, both apply."""
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    queues = ["global-a", "global-b", "global-c", "global-d"]
    for q in queues:
        ch.queue_declare(q)
        ch.queue_purge(q)
        for i in range(10):
            ch.basic_publish("", q, b"m%d" % i)
    held = {}

    def on_message(channel, method, properties, body):
        held.setdefault(method.consumer_tag, []).append(method.delivery_tag)

    def total():
        return sum(len(tags) for tags in held.values())

    ch.basic_qos(prefetch_count=3, global_qos=True)
    for q in queues[:2]:
        ch.basic_consume(q, on_message, auto_ack=False, consumer_tag="global-" + q)
    wait_for(conn, lambda: total() >= 3)
    assert total() == 3, held
    # Acking one frees one slot of the channel's window, for either consumer.
    first_tag = next(iter(held.values()))[0]
    ch.basic_ack(first_tag)
    wait_for(conn, lambda: total() >= 4)
    assert total() == 4, held
    conn.close()

    conn = connect()
    ch = conn.channel()
    held.clear()
    ch.basic_qos(prefetch_count=2)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    for q in queues[2:]:
        ch.basic_consume(q, on_message, auto_ack=False, consumer_tag="both-" + q)
    wait_for(conn, lambda: total() >= 3)
    counts = sorted(len(tags) for tags in held.values())
    assert counts == [1, 2], held
    for tags in held.values():
        ch.basic_ack(tags[-1], multiple=True)
    wait_for(conn, lambda: total() >= 6)
    assert total() == 6, held
    assert all(len(tags) <= 4 for tags in held.values()), held
    conn.close()
    print("ok global_prefetch")


def exclusive_consumer():
    """basic.consume exclusive: refused (403) on a queue with consumers, and while it lasts
    every other consume is refused (403); queue.delete if-unused with a consumer is 406."""
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare("excl-consumer-q").method.queue
    tag = ch.basic_consume(q, lambda *args: None, exclusive=True)
    for exclusive in [False, True]:
        other = conn.channel()
        try:
            other.basic_consume(q, lambda *args: None, exclusive=exclusive)
            raise AssertionError("a second consumer of an exclusive one's queue")
        except pika.exceptions.ChannelClosedByBroker as error:
            assert error.reply_code == 403 and "in exclusive use" in error.reply_text, error
    other = conn.channel()
    try:
        other.queue_delete(q, if_unused=True)
        raise AssertionError("if-unused delete of a queue with a consumer")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406 and "in use" in error.reply_text, error
    ch.basic_cancel(tag)
    ch.basic_consume(q, lambda *args: None)
    other = conn.channel()
    try:
        other.basic_consume(q, lambda *args: None, exclusive=True)
        raise AssertionError("an exclusive consumer of a queue with consumers")
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 403 and "in exclusive use" in error.reply_text, error
    ch.close()
    other = conn.channel()
    other.queue_delete(q, if_unused=True)
    conn.close()
    print("ok exclusive_consumer")


def connection_buffer_cap(cap):
    """A connection may make the broker hold at most `cap` body bytes across its channels
    (open transactions, partly received bodies): past it, connection.close 506
    RESOURCE_ERROR; within it, transactions commit; nothing uncommitted is stored."""
    cap = int(cap)
    part = cap * 2 // 5
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare("buffer-cap-q").method.queue
    ch.queue_purge(q)
    ch.tx_select()
    for _ in range(2):
        ch.basic_publish("", q, b"x" * part)
    ch.tx_commit()
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    # Two channels' open transactions together pass the cap.
    other = conn.channel()
    other.tx_select()
    for channel in [ch, other]:
        for _ in range(2):
            channel.basic_publish("", q, b"y" * (part * 3 // 4))
    try:
        ch.tx_commit()
        raise AssertionError("a connection buffered more than the cap")
    except pika.exceptions.ConnectionClosedByBroker as error:
        assert error.reply_code == 506 and "RESOURCE_ERROR" in error.reply_text, error
    conn = connect()
    ch = conn.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    conn.close()
    print("ok connection_buffer_cap")


SCENARIOS = {
    "metrics_traffic": metrics_traffic,
    "connection_buffer_cap": connection_buffer_cap,
    "global_prefetch": global_prefetch,
    "exclusive_consumer": exclusive_consumer,
    "priority_queue": priority_queue,
    "priority_order": priority_order,
    "delayed_exchange": delayed_exchange,
    "transactions": transactions,
    "overflow_reject_publish": overflow_reject_publish,
    "max_length_bytes": max_length_bytes,
    "disk_alarm": disk_alarm,
    "memory_alarm": memory_alarm,
    "single_active_consumer_and_cancel_notify": single_active_consumer_and_cancel_notify,
    "channel_flow": channel_flow,
    "dead_lettering": dead_lettering,
    "refused_arguments": refused_arguments,
    "redeclare_and_delete_preconditions": redeclare_and_delete_preconditions,
    "queue_expires": queue_expires,
    "consumer_priorities": consumer_priorities,
    "dead_letter_counts_when_republished": dead_letter_counts_when_republished,
    "exchange_to_exchange": exchange_to_exchange,
    "exchange_to_exchange_routes": exchange_to_exchange_routes,
    "confirms_and_properties": confirms_and_properties,
    "prefetch_manual_acks": prefetch_manual_acks,
    "exchange_types": exchange_types,
    "mandatory_return": mandatory_return,
    "pipelined_publishes": pipelined_publishes,
    "nack_requeue_reject": nack_requeue_reject,
    "basic_get": basic_get,
    "no_ack_cancel_delivers_once": no_ack_cancel_delivers_once,
    "server_named_exclusive": server_named_exclusive,
    "channel_error_keeps_connection": channel_error_keeps_connection,
    "publish": publish,
    "consume": consume,
    "wrong_vhost": wrong_vhost,
    "bad_login": bad_login,
}

SCENARIOS[SCENARIO](*ARGS)
