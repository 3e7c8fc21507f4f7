"""Logs in to wharfd with real clients (issue #18) and reports what happened.

    sasl_clients.py kafka BOOTSTRAP MECHANISM USER PASSWORD TOPIC [CA_FILE]
    sasl_clients.py kafka-admin BOOTSTRAP MECHANISM USER PASSWORD NEW_USER NEW_PASSWORD
    sasl_clients.py amqp HOST PORT USER PASSWORD QUEUE

kafka: confluent-kafka (librdkafka) with security.protocol=SASL_PLAINTEXT (SASL_SSL trusting
CA_FILE when it is given) and sasl.mechanism=MECHANISM produces three records to TOPIC and
reads them back.
kafka-admin: the admin client's alter_user_scram_credentials creates NEW_USER
(SCRAM-SHA-512) and describe_user_scram_credentials lists it.
amqp: pika logs in with PLAIN, publishes one message to QUEUE and gets it back.

Prints one line: `ok ...` and exits 0; `auth-failed <what the client reported>` and exits 3
when the client reports an authentication failure; `authz-failed <error>` and exits 4 when a
produce is refused by ACLs (TOPIC_AUTHORIZATION_FAILED); anything else exits 1.
"""

import sys


def kafka(bootstrap, mechanism, user, password, topic, ca_file=None):
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

    errors = []

    def on_error(error):
        errors.append(error)

    common = {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL" if ca_file else "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "error_cb": on_error,
    }
    if ca_file:
        common["ssl.ca.location"] = ca_file
    producer = Producer(dict(common, acks="all"))
    delivered = []
    try:
        for index in range(3):
            producer.produce(topic, value=f"v{index}".encode(), on_delivery=lambda error, message: delivered.append(error))
        producer.flush(15)
    except KafkaException as error:
        errors.append(error.args[0])
    auth = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    if auth:
        print(f"auth-failed {auth[0].name()}: {auth[0].str()}")
        sys.exit(3)
    refused = [e for e in delivered if e is not None and e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED]
    if refused:
        print(f"authz-failed {refused[0].name()}: {refused[0].str()}")
        sys.exit(4)
    if len(delivered) != 3 or any(error is not None for error in delivered):
        print(f"produce failed: {delivered} {[str(e) for e in errors]}")
        sys.exit(1)
    consumer = Consumer(dict(common, **{"group.id": "sasl-test", "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = []
    for _ in range(50):
        message = consumer.poll(1.0)
        if message is None:
            if len(values) >= 3:
                break
            continue
        if message.error():
            print(f"consume failed: {message.error()}")
            sys.exit(1)
        values.append(message.value().decode())
        if len(values) >= 3:
            break
    consumer.close()
    if values != ["v0", "v1", "v2"]:
        print(f"consume read {values}")
        sys.exit(1)
    print("ok " + ",".join(values))


def kafka_admin(bootstrap, mechanism, user, password, new_user, new_password):
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism,
            "sasl.username": user,
            "sasl.password": password,
        }
    )
    upsertion = UserScramCredentialUpsertion(
        new_user,
        ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
        new_password.encode(),
    )
    for future in admin.alter_user_scram_credentials([upsertion]).values():
        future.result(timeout=15)
    described = admin.describe_user_scram_credentials([new_user])[new_user].result(timeout=15)
    infos = described.scram_credential_infos
    print("ok " + ",".join(f"{info.mechanism.name}:{info.iterations}" for info in infos))


def amqp(host, port, user, password, queue):
    import pika

    parameters = pika.ConnectionParameters(
        host=host,
        port=int(port),
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=1,
    )
    try:
        connection = pika.BlockingConnection(parameters)
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError) as error:
        print(f"auth-failed {type(error).__name__}: {error}")
        sys.exit(3)
    channel = connection.channel()
    channel.queue_declare(queue=queue)
    channel.basic_publish(exchange="", routing_key=queue, body=b"hello")
    body = None
    for _ in range(50):
        method, _, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is not None:
            break
        connection.sleep(0.1)
    connection.close()
    if body != b"hello":
        print(f"get returned {body!r}")
        sys.exit(1)
    print("ok hello")


if __name__ == "__main__":
    mode, arguments = sys.argv[1], sys.argv[2:]
    {"kafka": kafka, "kafka-admin": kafka_admin, "amqp": amqp}[mode](*arguments)
