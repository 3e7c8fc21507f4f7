"""Lists every ACL with confluent-kafka's AdminClient, as JSON rows sorted.

    confluent_acls_list.py BOOTSTRAP
"""

import json
import sys

from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

admin = AdminClient({"bootstrap.servers": sys.argv[1]})
everything = AclBindingFilter(
    ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
    AclOperation.ANY, AclPermissionType.ANY,
)
rows = [
    [
        binding.restype.name,
        binding.name,
        binding.resource_pattern_type.name,
        binding.principal,
        binding.host,
        binding.operation.name,
        binding.permission_type.name,
    ]
    for binding in admin.describe_acls(everything).result(30)
]
print(json.dumps(sorted(rows)))
