"""aio-pika (asyncio RabbitMQ client, on aiormq) against wharfd's AMQP listener (issue #16).

Usage: aio_pika_scenarios.py HOST PORT SCENARIO

Each scenario asserts what RabbitMQ does (scripts/amqp-vs-rabbitmq.sh runs the pika ones
against RabbitMQ itself) and prints one line "ok SCENARIO" on success; any failed assertion
or client error exits non-zero with a traceback.
"""

import asyncio
import sys

import aio_pika

HOST, PORT, SCENARIO = sys.argv[1], int(sys.argv[2]), sys.argv[3]
URL = "amqp://guest:guest@%s:%d/" % (HOST, PORT)


async def confirms_prefetch_and_acks():
    connection = await aio_pika.connect_robust(URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=2)
        exchange = await channel.declare_exchange("aio-topic", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("aio-q", durable=True)
        await queue.bind(exchange, "orders.#")
        for index in range(6):
            message = aio_pika.Message(
                body=b"m%d" % index,
                headers={"index": index, "kind": "order"},
                content_type="text/plain",
                correlation_id="c%d" % index,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            # Confirmed: returns once the broker acked it.
            await exchange.publish(message, routing_key="orders.eu.%d" % index)
        # An unroutable mandatory publish comes back: aio-pika answers the returned message
        # instead of the Basic.Ack.
        returned = await exchange.publish(
            aio_pika.Message(b"lost", message_id="lost-1"), routing_key="nobody", mandatory=True,
        )
        assert getattr(returned, "body", None) == b"lost", returned

        received = []

        async def on_message(message):
            received.append(message)

        await queue.consume(on_message)
        for window_end in (2, 4, 6):
            for _ in range(100):
                if len(received) >= window_end:
                    break
                await asyncio.sleep(0.05)
            # The prefetch window is full: nothing more arrives until the acks.
            await asyncio.sleep(0.3)
            assert len(received) == window_end, (window_end, len(received))
            for message in received[window_end - 2:]:
                await message.ack()
        bodies = [message.body for message in received]
        assert bodies == [b"m%d" % index for index in range(6)], bodies
        first = received[0]
        assert first.headers == {"index": 0, "kind": "order"}, first.headers
        assert first.content_type == "text/plain" and first.correlation_id == "c0", first
        assert first.routing_key == "orders.eu.0" and first.exchange == "aio-topic", first
        assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT, first
    print("ok confirms_prefetch_and_acks")


async def dead_letter_and_cancel_notify():
    connection = await aio_pika.connect_robust(URL)
    async with connection:
        channel = await connection.channel()
        dlx = await channel.declare_exchange("aio-dlx", aio_pika.ExchangeType.FANOUT)
        dead = await channel.declare_queue("aio-dead")
        await dead.bind(dlx)
        work = await channel.declare_queue("aio-work", arguments={"x-dead-letter-exchange": "aio-dlx"})
        await channel.default_exchange.publish(aio_pika.Message(b"poison"), routing_key="aio-work")
        message = await work.get(timeout=5)
        await message.reject(requeue=False)
        for _ in range(50):
            died = await dead.get(fail=False)
            if died is not None:
                break
            await asyncio.sleep(0.1)
        assert died is not None and died.body == b"poison", died
        death = died.headers["x-death"][0]
        assert death["reason"] == "rejected" and death["queue"] == "aio-work", death
        assert death["count"] == 1 and list(death["routing-keys"]) == ["aio-work"], death
        await died.ack()

        # A consumer whose queue is deleted is told with basic.cancel.
        cancelled = asyncio.Event()
        doomed = await channel.declare_queue("aio-doomed")
        tag = await doomed.consume(lambda message: None)
        underlying = await channel.get_underlay_channel()
        other = await connection.channel()
        consumers = underlying.consumers
        assert tag in consumers, consumers
        await other.queue_delete("aio-doomed")
        for _ in range(50):
            if tag not in underlying.consumers:
                cancelled.set()
                break
            await asyncio.sleep(0.1)
        assert cancelled.is_set(), "no basic.cancel for the deleted queue's consumer"
    print("ok dead_letter_and_cancel_notify")


SCENARIOS = {
    "confirms_prefetch_and_acks": confirms_prefetch_and_acks,
    "dead_letter_and_cancel_notify": dead_letter_and_cancel_notify,
}

asyncio.run(SCENARIOS[SCENARIO]())
