"""confluent-kafka (librdkafka) over TLS against wharfd's Kafka listener (issue #18).

    confluent_tls.py BOOTSTRAP CA_FILE TOPIC COUNT [CLIENT_CERT CLIENT_KEY]

With `security.protocol=SSL` and `ssl.ca.location=CA_FILE` (plus the client certificate
for mutual TLS when given): produces COUNT records to TOPIC (auto-created) with acks=all,
then reads partition 0 back from the beginning. Prints one JSON document:
{"acked": N, "read": [values...]}. Any client error exits 1.
"""

import json
import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

bootstrap, ca_file, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tls = {
    "bootstrap.servers": bootstrap,
    "security.protocol": "SSL",
    "ssl.ca.location": ca_file,
    # Fail fast instead of retrying a handshake that cannot succeed.
    "reconnect.backoff.max.ms": 1000,
}
if len(sys.argv) > 6:
    tls["ssl.certificate.location"] = sys.argv[5]
    tls["ssl.key.location"] = sys.argv[6]

errors = []


def on_error(error):
    errors.append(str(error))


producer = Producer({**tls, "acks": "all", "linger.ms": 5, "error_cb": on_error, "message.timeout.ms": 20000})
acked = []


def on_delivery(error, message):
    if error is not None:
        errors.append(str(error))
    else:
        acked.append(message.offset())


for i in range(count):
    producer.produce(topic, value=f"tls-{i}", partition=0, on_delivery=on_delivery)
    producer.poll(0)
remaining = producer.flush(30)
if remaining or len(acked) != count:
    print(json.dumps({"unflushed": remaining, "acked": len(acked), "errors": errors}))
    sys.exit(1)

consumer = Consumer({**tls, "group.id": "tls-assign-only", "enable.auto.commit": False})
consumer.assign([TopicPartition(topic, 0, 0)])
read = []
while len(read) < count:
    message = consumer.poll(10)
    if message is None:
        break
    if message.error():
        raise KafkaException(message.error())
    read.append(message.value().decode())
consumer.close()
print(json.dumps({"acked": len(acked), "read": read}))
