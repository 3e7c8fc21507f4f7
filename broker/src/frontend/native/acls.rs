//! The native ACL apis (issue #18) → core calls: CreateAcls (all or none), DescribeAcls and
//! DeleteAcls with a filter. The same ACLs as Kafka's apis and `/api/v1/acls`; names, not
//! codes, on the wire (docs/PROTOCOL.md).

use wharf_protocol::messages::{
    AclAdminResponse, AclEntry, AclFilterRequest, AclListResponse, CreateAclsRequest,
};

use crate::core::{
    binding_from_names, filter_from_names, AclBinding, AclError, AclFilter, Broker, Session,
};
use crate::frontend::native::error_code;

/// CreateAcls: every ACL is checked first; one that does not parse or means nothing refuses
/// the request (InvalidAcl) and adds none. Durable before the answer.
pub async fn create_acls(
    broker: &Broker,
    caller: &Session,
    request: CreateAclsRequest,
) -> AclAdminResponse {
    let parsed: Result<Vec<AclBinding>, AclError> = request
        .acls
        .iter()
        .map(|entry| {
            binding_from_names(
                &entry.principal,
                &entry.host,
                &entry.resource_type,
                &entry.pattern_type,
                &entry.name,
                &entry.operation,
                &entry.permission,
            )
        })
        .collect();
    let outcome = match parsed {
        Ok(acls) => broker.create_acls(caller, acls).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(()) => AclAdminResponse::default(),
        Err(error) => AclAdminResponse {
            error: error_code::acl(&error),
            error_message: Some(error.to_string()),
        },
    }
}

/// DescribeAcls: the ACLs the filter selects.
pub fn describe_acls(
    broker: &Broker,
    caller: &Session,
    request: AclFilterRequest,
) -> AclListResponse {
    match filter(request).and_then(|filter| broker.describe_acls(caller, &filter)) {
        Ok(acls) => listed(acls),
        Err(error) => refused(&error),
    }
}

/// DeleteAcls: removes the ACLs the filter selects (durable before the answer) and lists them.
pub async fn delete_acls(
    broker: &Broker,
    caller: &Session,
    request: AclFilterRequest,
) -> AclListResponse {
    let filter = match filter(request) {
        Ok(filter) => filter,
        Err(error) => return refused(&error),
    };
    match broker.delete_acls(caller, vec![filter]).await {
        Ok(removed) => listed(removed.into_iter().flatten().collect()),
        Err(error) => refused(&error),
    }
}

fn filter(request: AclFilterRequest) -> Result<AclFilter, AclError> {
    filter_from_names(
        request.principal,
        request.host,
        request.resource_type.as_deref(),
        &request.pattern,
        request.name,
        request.operation.as_deref(),
        request.permission.as_deref(),
    )
}

fn listed(acls: Vec<AclBinding>) -> AclListResponse {
    AclListResponse {
        acls: acls.iter().map(entry).collect(),
        ..AclListResponse::default()
    }
}

fn refused(error: &AclError) -> AclListResponse {
    AclListResponse {
        error: error_code::acl(error),
        error_message: Some(error.to_string()),
        acls: Vec::new(),
    }
}

fn entry(acl: &AclBinding) -> AclEntry {
    AclEntry {
        principal: acl.principal.clone(),
        host: acl.host.clone(),
        resource_type: acl.resource_type.name().to_string(),
        pattern_type: acl.pattern_type.name().to_string(),
        name: acl.name.clone(),
        operation: acl.operation.name().to_string(),
        permission: acl.permission.name().to_string(),
    }
}
