"""pika over TLS (pika.SSLOptions) against wharfd's AMQP listener (issue #18).

    pika_tls.py HOST PORT CA_FILE QUEUE COUNT

Connects over TLS trusting CA_FILE (checking the certificate against HOST), declares
QUEUE, publishes COUNT messages with publisher confirms, consumes them back and prints
one line "ok N" when every message came back in order; any error exits non-zero.
"""

import ssl
import sys

import pika

host, port, ca_file, queue, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])

context = ssl.create_default_context(cafile=ca_file)
params = pika.ConnectionParameters(
    host=host,
    port=port,
    credentials=pika.PlainCredentials("guest", "guest"),
    ssl_options=pika.SSLOptions(context, server_hostname=host),
    connection_attempts=1,
    blocked_connection_timeout=30,
)
connection = pika.BlockingConnection(params)
channel = connection.channel()
channel.confirm_delivery()
channel.queue_declare(queue, durable=True)
for i in range(count):
    channel.basic_publish("", queue, f"tls-{i}".encode(), mandatory=True)
got = []
for method, _properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=10):
    if method is None:
        break
    got.append(body.decode())
    if len(got) == count:
        break
channel.cancel()
connection.close()
expected = [f"tls-{i}" for i in range(count)]
assert got == expected, f"consumed {got!r}, expected {expected!r}"
print(f"ok {count}")
