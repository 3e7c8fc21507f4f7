//! Kafka's ACL apis → core calls (issue #18): CreateAcls, DescribeAcls and DeleteAcls, so
//! Kafka's admin tools and librdkafka's admin API manage the same ACLs as `wharf acl`. The
//! codes of resource types, pattern types, operations and permissions are Kafka's (its
//! `AclOperation`, `ResourceType`, `PatternType` and `AclPermissionType` enums). Wharf's own
//! resource types (queues, exchanges) have no Kafka code: Kafka's tools neither see nor
//! change their ACLs.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::error_code;
use super::handlers::text;
use crate::core::{
    AclBinding, AclFilter, Broker, Operation, PatternFilter, PatternType, Permission, ResourceType,
    Session,
};

/// Kafka's filter code "any" (resource type, pattern type, operation, permission).
const ANY: i8 = 1;
/// Kafka's pattern type filter "match".
const MATCH: i8 = 2;

/// CreateAcls: each creation is checked on its own; the valid ones are added together
/// (durable before the answer), an invalid one gets INVALID_REQUEST with the reason.
pub async fn create_acls(
    broker: &Broker,
    caller: &Session,
    request: CreateAclsRequest,
) -> CreateAclsResponse {
    let parsed: Vec<Result<AclBinding, String>> = request
        .creations
        .iter()
        .map(|creation| {
            let acl = binding(creation)?;
            acl.validate().map_err(|error| error.to_string())?;
            Ok(acl)
        })
        .collect();
    let valid: Vec<AclBinding> = parsed.iter().filter_map(|acl| acl.clone().ok()).collect();
    let stored = if valid.is_empty() {
        Ok(())
    } else {
        broker.create_acls(caller, valid).await
    };
    let results = parsed
        .into_iter()
        .map(|acl| match (acl, &stored) {
            (Err(reason), _) => refused(ResponseError::InvalidRequest.code(), reason),
            (Ok(_), Err(error)) => refused(error_code::acl(error), error.to_string()),
            (Ok(_), Ok(())) => AclCreationResult::default(),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

/// DescribeAcls: the ACLs the filter selects, grouped by resource pattern.
pub fn describe_acls(
    broker: &Broker,
    caller: &Session,
    request: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let filter = match filter(
        request.resource_type_filter,
        request
            .resource_name_filter
            .as_ref()
            .map(|name| name.as_str()),
        request.pattern_type_filter,
        request.principal_filter.as_ref().map(|name| name.as_str()),
        request.host_filter.as_ref().map(|name| name.as_str()),
        request.operation,
        request.permission_type,
    ) {
        Ok(filter) => filter,
        Err(reason) => {
            return DescribeAclsResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(text(&reason)))
        }
    };
    let mut resources: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    let acls = match broker.describe_acls(caller, &filter) {
        Ok(acls) => acls,
        Err(error) => {
            return DescribeAclsResponse::default()
                .with_error_code(error_code::acl(&error))
                .with_error_message(Some(text(&error.to_string())))
        }
    };
    for acl in acls {
        let Some(resource_type) = resource_type_code(acl.resource_type) else {
            continue;
        };
        resources
            .entry((
                resource_type,
                acl.name.clone(),
                pattern_type_code(acl.pattern_type),
            ))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(text(&acl.principal))
                    .with_host(text(&acl.host))
                    .with_operation(operation_code(acl.operation))
                    .with_permission_type(permission_code(acl.permission)),
            );
    }
    let resources = resources
        .into_iter()
        .map(|((resource_type, name, pattern_type), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(text(&name))
                .with_pattern_type(pattern_type)
                .with_acls(acls)
        })
        .collect();
    DescribeAclsResponse::default().with_resources(resources)
}

/// DeleteAcls: removes what each filter selects (durable before the answer) and lists it
/// per filter; a malformed filter gets INVALID_REQUEST and removes nothing.
pub async fn delete_acls(
    broker: &Broker,
    caller: &Session,
    request: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let parsed: Vec<Result<AclFilter, String>> =
        request.filters.iter().map(delete_filter).collect();
    let valid: Vec<AclFilter> = parsed
        .iter()
        .filter_map(|filter| filter.clone().ok())
        .collect();
    let removed = broker.delete_acls(caller, valid).await;
    let mut removed_each = match &removed {
        Ok(lists) => lists.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let results = parsed
        .into_iter()
        .map(|filter| match (filter, &removed) {
            (Err(reason), _) => DeleteAclsFilterResult::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(text(&reason))),
            (Ok(_), Err(error)) => DeleteAclsFilterResult::default()
                .with_error_code(error_code::acl(error))
                .with_error_message(Some(text(&error.to_string()))),
            (Ok(_), Ok(_)) => DeleteAclsFilterResult::default().with_matching_acls(
                removed_each
                    .next()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(matching_acl)
                    .collect(),
            ),
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}

fn refused(code: i16, reason: String) -> AclCreationResult {
    AclCreationResult::default()
        .with_error_code(code)
        .with_error_message(Some(text(&reason)))
}

fn binding(creation: &AclCreation) -> Result<AclBinding, String> {
    let resource_type = resource_type(creation.resource_type).ok_or_else(|| {
        format!(
            "resource type {} is not one ACLs take",
            creation.resource_type
        )
    })?;
    let pattern_type = match creation.resource_pattern_type {
        3 => PatternType::Literal,
        4 => PatternType::Prefixed,
        other => {
            return Err(format!(
                "pattern type {other} is neither LITERAL (3) nor PREFIXED (4)"
            ))
        }
    };
    let operation = operation(creation.operation)
        .ok_or_else(|| format!("operation {} is not one ACLs take", creation.operation))?;
    let permission = permission(creation.permission_type).ok_or_else(|| {
        format!(
            "permission type {} is neither DENY (2) nor ALLOW (3)",
            creation.permission_type
        )
    })?;
    Ok(AclBinding {
        principal: creation.principal.to_string(),
        host: creation.host.to_string(),
        resource_type,
        pattern_type,
        name: creation.resource_name.to_string(),
        operation,
        permission,
    })
}

fn delete_filter(filter: &DeleteAclsFilter) -> Result<AclFilter, String> {
    self::filter(
        filter.resource_type_filter,
        filter
            .resource_name_filter
            .as_ref()
            .map(|name| name.as_str()),
        filter.pattern_type_filter,
        filter.principal_filter.as_ref().map(|name| name.as_str()),
        filter.host_filter.as_ref().map(|name| name.as_str()),
        filter.operation,
        filter.permission_type,
    )
}

/// A Kafka binding filter as the core's: `ANY` codes and absent strings match anything.
fn filter(
    resource_type_code: i8,
    name: Option<&str>,
    pattern_type: i8,
    principal: Option<&str>,
    host: Option<&str>,
    operation_code: i8,
    permission_code: i8,
) -> Result<AclFilter, String> {
    let any_or = |code: i8, what: &str, parsed: Option<()>| {
        if code == ANY || parsed.is_some() {
            Ok(())
        } else {
            Err(format!("{what} {code} is unknown"))
        }
    };
    let kind = resource_type(resource_type_code);
    any_or(resource_type_code, "resource type", kind.map(|_| ()))?;
    let wanted_operation = operation(operation_code);
    any_or(operation_code, "operation", wanted_operation.map(|_| ()))?;
    let wanted_permission = permission(permission_code);
    any_or(
        permission_code,
        "permission type",
        wanted_permission.map(|_| ()),
    )?;
    let pattern = match pattern_type {
        ANY => PatternFilter::Any,
        MATCH => PatternFilter::Match,
        3 => PatternFilter::Exactly(PatternType::Literal),
        4 => PatternFilter::Exactly(PatternType::Prefixed),
        other => return Err(format!("pattern type filter {other} is unknown")),
    };
    Ok(AclFilter {
        principal: principal.map(str::to_string),
        host: host.map(str::to_string),
        resource_type: kind,
        pattern,
        name: name.map(str::to_string),
        operation: wanted_operation,
        permission: wanted_permission,
    })
}

fn matching_acl(acl: &AclBinding) -> Option<DeleteAclsMatchingAcl> {
    Some(
        DeleteAclsMatchingAcl::default()
            .with_resource_type(resource_type_code(acl.resource_type)?)
            .with_resource_name(text(&acl.name))
            .with_pattern_type(pattern_type_code(acl.pattern_type))
            .with_principal(text(&acl.principal))
            .with_host(text(&acl.host))
            .with_operation(operation_code(acl.operation))
            .with_permission_type(permission_code(acl.permission)),
    )
}

/// Kafka's resource types: TOPIC 2, GROUP 3, CLUSTER 4, TRANSACTIONAL_ID 5.
fn resource_type(code: i8) -> Option<ResourceType> {
    match code {
        2 => Some(ResourceType::Topic),
        3 => Some(ResourceType::Group),
        4 => Some(ResourceType::Cluster),
        5 => Some(ResourceType::TransactionalId),
        _ => None,
    }
}

fn resource_type_code(kind: ResourceType) -> Option<i8> {
    match kind {
        ResourceType::Topic => Some(2),
        ResourceType::Group => Some(3),
        ResourceType::Cluster => Some(4),
        ResourceType::TransactionalId => Some(5),
        ResourceType::Queue | ResourceType::Exchange => None,
    }
}

fn pattern_type_code(pattern_type: PatternType) -> i8 {
    match pattern_type {
        PatternType::Literal => 3,
        PatternType::Prefixed => 4,
    }
}

/// Kafka's operations, ALL (2) to IDEMPOTENT_WRITE (12), in Kafka's order.
const OPERATION_CODES: [(i8, Operation); 11] = [
    (2, Operation::All),
    (3, Operation::Read),
    (4, Operation::Write),
    (5, Operation::Create),
    (6, Operation::Delete),
    (7, Operation::Alter),
    (8, Operation::Describe),
    (9, Operation::ClusterAction),
    (10, Operation::DescribeConfigs),
    (11, Operation::AlterConfigs),
    (12, Operation::IdempotentWrite),
];

fn operation(code: i8) -> Option<Operation> {
    OPERATION_CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, operation)| *operation)
}

fn operation_code(operation: Operation) -> i8 {
    OPERATION_CODES
        .iter()
        .find(|(_, known)| *known == operation)
        .map_or(0, |(code, _)| *code)
}

/// Kafka's permission types: DENY 2, ALLOW 3.
fn permission(code: i8) -> Option<Permission> {
    match code {
        2 => Some(Permission::Deny),
        3 => Some(Permission::Allow),
        _ => None,
    }
}

fn permission_code(permission: Permission) -> i8 {
    match permission {
        Permission::Deny => 2,
        Permission::Allow => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_codes_round_trip_and_cover_every_operation() {
        for operation in Operation::ALL {
            assert_eq!(super::operation(operation_code(operation)), Some(operation));
        }
        assert_eq!(
            super::operation(1),
            None,
            "ANY is a filter, not an operation"
        );
    }

    #[test]
    fn kafka_filters_become_core_filters() {
        let all = filter(ANY, None, ANY, None, None, ANY, ANY).expect("valid");
        assert_eq!(all, AclFilter::default());
        let matching = filter(2, Some("orders"), MATCH, Some("User:a"), None, 3, 3).expect("valid");
        assert_eq!(matching.resource_type, Some(ResourceType::Topic));
        assert_eq!(matching.pattern, PatternFilter::Match);
        assert_eq!(matching.operation, Some(Operation::Read));
        assert_eq!(matching.permission, Some(Permission::Allow));
        assert!(filter(9, None, ANY, None, None, ANY, ANY).is_err());
        assert!(filter(ANY, None, 7, None, None, ANY, ANY).is_err());
    }
}
