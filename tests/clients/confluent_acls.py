"""ACL admin with confluent-kafka's AdminClient against wharfd's Kafka listener: create,
describe with filters, delete, and the errors of malformed ACLs.

    confluent_acls.py BOOTSTRAP          the steps below, as one JSON document
    confluent_acls.py BOOTSTRAP list     every ACL, as JSON rows sorted

A step that fails unexpectedly raises.
"""

import json
import sys

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

bootstrap = sys.argv[1]
admin = AdminClient({"bootstrap.servers": bootstrap})
out = {}
everything = AclBindingFilter(
    ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
    AclOperation.ANY, AclPermissionType.ANY,
)


def error_name(future):
    try:
        future.result(30)
        return None
    except KafkaException as error:
        return error.args[0].name()


def plain(binding):
    return [
        binding.restype.name,
        binding.name,
        binding.resource_pattern_type.name,
        binding.principal,
        binding.host,
        binding.operation.name,
        binding.permission_type.name,
    ]


if sys.argv[2:] == ["list"]:
    print(json.dumps(sorted(plain(binding) for binding in admin.describe_acls(everything).result(30))))
    sys.exit(0)

read_orders = AclBinding(
    ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL,
    "User:alice", "*", AclOperation.READ, AclPermissionType.ALLOW,
)
write_prefixed = AclBinding(
    ResourceType.TOPIC, "ord", ResourcePatternType.PREFIXED,
    "User:bob", "*", AclOperation.WRITE, AclPermissionType.ALLOW,
)
deny_group = AclBinding(
    ResourceType.GROUP, "billing", ResourcePatternType.LITERAL,
    "User:bob", "*", AclOperation.READ, AclPermissionType.DENY,
)
# A group has no Write operation: refused with the reason.
bad = AclBinding(
    ResourceType.GROUP, "billing", ResourcePatternType.LITERAL,
    "User:bob", "*", AclOperation.WRITE, AclPermissionType.ALLOW,
)
created = admin.create_acls([read_orders, write_prefixed, deny_group, bad])
out["create"] = {"|".join(plain(binding)): error_name(future) for binding, future in created.items()}

out["all"] = sorted(plain(binding) for binding in admin.describe_acls(everything).result(30))

# MATCH: the ACLs that apply to topic "orders" (the literal one and the prefix "ord").
matching = AclBindingFilter(
    ResourceType.TOPIC, "orders", ResourcePatternType.MATCH, None, None,
    AclOperation.ANY, AclPermissionType.ANY,
)
out["match_orders"] = sorted(plain(binding) for binding in admin.describe_acls(matching).result(30))

bobs = AclBindingFilter(
    ResourceType.ANY, None, ResourcePatternType.ANY, "User:bob", None,
    AclOperation.ANY, AclPermissionType.ANY,
)
deleted = admin.delete_acls([bobs])
out["deleted"] = sorted(plain(binding) for binding in deleted[bobs].result(30))
out["after_delete"] = sorted(plain(binding) for binding in admin.describe_acls(everything).result(30))

print(json.dumps(out))
