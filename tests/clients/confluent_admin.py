"""Topic and group admin with confluent-kafka's AdminClient against wharfd's Kafka listener.

    confluent_admin.py BOOTSTRAP

Each step's outcome goes into one JSON document; a step that fails unexpectedly raises.
"""

import json
import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

bootstrap = sys.argv[1]
admin = AdminClient({"bootstrap.servers": bootstrap})
out = {}


def error_name(future):
    try:
        future.result(30)
        return None
    except KafkaException as error:
        return error.args[0].name()


def describe(topic):
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(30)
    return {name: [entry.value, entry.source] for name, entry in configs.items()}


topic = "admin-t"
out["create"] = error_name(
    admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=2,
                replication_factor=1,
                config={"retention.ms": "3600000", "cleanup.policy": "delete", "max.message.bytes": "2000"},
            )
        ]
    )[topic]
)
out["create_again"] = error_name(admin.create_topics([NewTopic(topic, num_partitions=2)])[topic])
out["create_compacted"] = error_name(
    admin.create_topics([NewTopic("admin-c", num_partitions=1, config={"cleanup.policy": "compact"})])["admin-c"]
)
out["create_bad_policy"] = error_name(
    admin.create_topics([NewTopic("admin-p", num_partitions=1, config={"cleanup.policy": "shrink"})])["admin-p"]
)
out["described"] = describe(topic)

# validate_only: every check runs and nothing changes.
out["validate_create"] = error_name(
    admin.create_topics([NewTopic("admin-v", num_partitions=3)], validate_only=True)["admin-v"]
)
out["validate_create_bad_config"] = error_name(
    admin.create_topics([NewTopic("admin-v", num_partitions=1, config={"retention.ms": "soon"})], validate_only=True)[
        "admin-v"
    ]
)
out["validate_create_existing"] = error_name(
    admin.create_topics([NewTopic(topic, num_partitions=1)], validate_only=True)[topic]
)
out["validated_topic_exists"] = "admin-v" in admin.list_topics(timeout=30).topics
out["validate_partitions"] = error_name(admin.create_partitions([NewPartitions(topic, 9)], validate_only=True)[topic])
validated = ConfigResource(
    ConfigResource.Type.TOPIC,
    topic,
    incremental_configs=[ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.SET)],
)
out["validate_alter"] = error_name(admin.incremental_alter_configs([validated], validate_only=True)[validated])
out["after_validate"] = describe(topic)
out["partitions_after_validate"] = len(admin.list_topics(topic, timeout=30).topics[topic].partitions)

resource = ConfigResource(
    ConfigResource.Type.TOPIC,
    topic,
    incremental_configs=[
        ConfigEntry("retention.bytes", "1000000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ],
)
out["incremental"] = error_name(admin.incremental_alter_configs([resource])[resource])
out["after_incremental"] = describe(topic)

out["add_partitions"] = error_name(admin.create_partitions([NewPartitions(topic, 4)])[topic])
out["shrink_partitions"] = error_name(admin.create_partitions([NewPartitions(topic, 3)])[topic])
out["partitions"] = len(admin.list_topics(topic, timeout=30).topics[topic].partitions)

# max.message.bytes=2000: the broker refuses a larger batch (each flushed alone, so the
# small record is a batch of its own).
delivery = []
producer = Producer({"bootstrap.servers": bootstrap})
producer.produce(topic, value=b"x" * 5000, partition=0, on_delivery=lambda error, message: delivery.append(error))
producer.flush(30)
producer.produce(topic, value=b"small", partition=0, on_delivery=lambda error, message: delivery.append(error))
producer.flush(30)
out["oversized"] = delivery[0].name() if delivery[0] else None
out["small"] = delivery[1].name() if delivery[1] else None

unknown = ConfigResource(ConfigResource.Type.TOPIC, "no-such-topic")
out["unknown_topic_configs"] = error_name(admin.describe_configs([unknown])[unknown])

consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "admin-g", "enable.auto.commit": False})
consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
consumer.close()
out["groups_before"] = sorted(group.group_id for group in admin.list_consumer_groups().result(30).valid)
out["delete_group"] = error_name(admin.delete_consumer_groups(["admin-g"])["admin-g"])
out["delete_unknown_group"] = error_name(admin.delete_consumer_groups(["nobody"])["nobody"])
out["groups_after"] = sorted(group.group_id for group in admin.list_consumer_groups().result(30).valid)

# DeleteRecords: records below offset 6 of admin-d go; its log start (low watermark) is 6.
admin.create_topics([NewTopic("admin-d", num_partitions=1)])["admin-d"].result(30)
for i in range(10):
    producer.produce("admin-d", value=f"d{i}".encode(), partition=0)
producer.flush(30)
deleted = admin.delete_records([TopicPartition("admin-d", 0, 6)])
out["delete_records"] = list(deleted.values())[0].result(30).low_watermark
out["delete_records_past_end"] = error_name(list(admin.delete_records([TopicPartition("admin-d", 0, 99)]).values())[0])
reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "admin-reader", "auto.offset.reset": "earliest"})
out["low_after_delete"] = reader.get_watermark_offsets(TopicPartition("admin-d", 0), timeout=30)[0]
reader.assign([TopicPartition("admin-d", 0)])
first = reader.poll(30)
out["first_after_delete"] = [first.offset(), first.value().decode()]
reader.close()

cluster = admin.describe_cluster().result(30)
out["cluster"] = {"id": cluster.cluster_id, "nodes": len(cluster.nodes), "controller": cluster.controller.id}

out["delete_topic"] = error_name(admin.delete_topics([topic])[topic])
out["topics_after"] = sorted(admin.list_topics(timeout=30).topics)
print(json.dumps(out))
