"""One request of the ACL matrix test (tests/tests/acl_enforcement.rs) made by a real client.

Usage:
  acl_matrix.py kafka BOOTSTRAP USER PASSWORD CASE NAME
  acl_matrix.py amqp HOST PORT USER PASSWORD CASE NAME

Each CASE makes one request that needs exactly one ACL operation on the resource NAME
and prints one JSON line: {"ok": true} or {"ok": false, "error": CODE, "detail": TEXT},
CODE being the protocol's own error name (Kafka's error code name, AMQP's reply code).
"""

import json
import sys


def report(ok, error=None, detail=None):
    print(json.dumps({"ok": ok, "error": error, "detail": detail}))


def kafka_error_name(error):
    """A KafkaError (or an exception wrapping one) as its code name."""
    inner = error.args[0] if getattr(error, "args", None) else error
    name = getattr(inner, "name", None)
    return name() if callable(name) else str(inner)


def kafka_case(bootstrap, user, password, case, name):
    from confluent_kafka import (
        Consumer,
        KafkaException,
        Producer,
        TopicPartition,
    )
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ConfigResource,
        NewPartitions,
        NewTopic,
        ResourcePatternType,
        ResourceType,
    )

    common = {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": password,
    }
    admin = AdminClient(dict(common))

    def wait(futures):
        for future in futures.values():
            future.result(timeout=20)

    try:
        if case == "topic-write":
            errors = []
            producer = Producer(dict(common, **{"message.timeout.ms": 8000, "retries": 0}))
            producer.produce(
                name, b"v", partition=0, on_delivery=lambda error, _: error and errors.append(error)
            )
            producer.flush(15)
            if errors:
                return report(False, errors[0].name(), errors[0].str())
        elif case == "topic-read":
            consumer = Consumer(
                dict(common, **{"group.id": "acl-matrix-reader", "enable.auto.commit": False})
            )
            consumer.assign([TopicPartition(name, 0, 0)])
            try:
                for _ in range(40):
                    message = consumer.poll(0.5)
                    if message is None:
                        continue
                    if message.error():
                        return report(False, message.error().name(), message.error().str())
                    break
                else:
                    return report(False, "TIMED_OUT", "no record and no error")
            finally:
                consumer.close()
        elif case == "topic-describe":
            metadata = admin.list_topics(topic=name, timeout=15)
            error = metadata.topics[name].error
            if error is not None:
                return report(False, error.name(), error.str())
        elif case == "topic-create":
            wait(admin.create_topics([NewTopic(name, 1, 1)]))
        elif case == "topic-delete":
            wait(admin.delete_topics([name]))
        elif case == "topic-alter":
            # NAME is TOPIC:COUNT, the partition count to grow to.
            topic, count = name.split(":")
            wait(admin.create_partitions([NewPartitions(topic, int(count))]))
        elif case == "topic-alter-configs":
            resource = ConfigResource("topic", name, set_config={"retention.ms": "3600000"})
            wait(admin.alter_configs([resource]))
        elif case == "topic-describe-configs":
            wait(admin.describe_configs([ConfigResource("topic", name)]))
        elif case == "group-read":
            # NAME is GROUP:TOPIC; a standalone consumer commits offset 0 of the topic.
            group, topic = name.split(":")
            consumer = Consumer(dict(common, **{"group.id": group, "enable.auto.commit": False}))
            try:
                consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
            finally:
                consumer.close()
        elif case == "group-describe":
            for future in admin.describe_consumer_groups([name]).values():
                future.result(timeout=20)
        elif case == "group-delete":
            wait(admin.delete_consumer_groups([name]))
        elif case == "txn-write":
            producer = Producer(dict(common, **{"transactional.id": name}))
            producer.init_transactions(15)
        elif case == "cluster-alter":
            acl = AclBinding(
                ResourceType.TOPIC,
                name,
                ResourcePatternType.LITERAL,
                "User:nobody",
                "*",
                AclOperation.READ,
                AclPermissionType.ALLOW,
            )
            for future in admin.create_acls([acl]).values():
                future.result(timeout=20)
        elif case == "cluster-describe":
            # librdkafka 2.16 turns DescribeAcls' top-level error into an empty list, so
            # this request is made with kafka-python, which raises it as Kafka's Java
            # client does.
            return kafka_python_describe_acls(bootstrap, user, password)
        else:
            raise SystemExit(f"unknown kafka case {case}")
    except KafkaException as error:
        return report(False, kafka_error_name(error), str(error))
    report(True)


def kafka_python_describe_acls(bootstrap, user, password):
    from kafka import KafkaAdminClient
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ResourcePatternFilter
    from kafka.admin import ACLResourcePatternType, ResourceType as PyResourceType
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username=user,
        sasl_plain_password=password,
    )
    acl_filter = ACLFilter(
        principal=None,
        host="*",
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(PyResourceType.ANY, None, ACLResourcePatternType.ANY),
    )
    try:
        admin.describe_acls(acl_filter)
    except KafkaError as error:
        return report(False, getattr(error, "message", type(error).__name__), str(error))
    finally:
        admin.close()
    report(True)


def amqp_case(host, port, user, password, case, name):
    import pika

    parameters = pika.ConnectionParameters(
        host=host,
        port=int(port),
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=3,
    )
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        if case == "queue-create":
            channel.queue_declare(name, durable=True)
        elif case == "queue-write":
            channel.basic_publish("", name, b"m")
        elif case == "queue-read":
            channel.basic_get(name, auto_ack=True)
        elif case == "queue-delete":
            channel.queue_delete(name)
        elif case == "queue-describe":
            channel.queue_declare(name, passive=True)
        elif case == "exchange-create":
            channel.exchange_declare(name, "direct", durable=True)
        elif case == "exchange-write":
            channel.basic_publish(name, "k", b"m")
        elif case == "exchange-read":
            # NAME is EXCHANGE:QUEUE; binding needs Write on the queue and Read on the exchange.
            exchange, queue = name.split(":")
            channel.queue_bind(queue, exchange, routing_key="k")
        elif case == "exchange-delete":
            channel.exchange_delete(name)
        elif case == "exchange-describe":
            channel.exchange_declare(name, "direct", passive=True)
        else:
            raise SystemExit(f"unknown amqp case {case}")
    except pika.exceptions.AMQPChannelError as error:
        code = getattr(error, "reply_code", None)
        text = getattr(error, "reply_text", str(error))
        return report(False, str(code), text)
    finally:
        if connection.is_open:
            connection.close()
    report(True)


if __name__ == "__main__":
    mode, arguments = sys.argv[1], sys.argv[2:]
    if mode == "kafka":
        kafka_case(*arguments)
    elif mode == "amqp":
        amqp_case(*arguments)
    else:
        raise SystemExit(f"unknown mode {mode}")
