//! ACLs over HTTP (issue #18; docs/HTTP.md): add, list and remove the same ACLs as Kafka's
//! CreateAcls/DescribeAcls/DeleteAcls and `wharf acl`. Each route is one core call; names
//! are the CLI's (`topic`, `transactional-id`, `literal`, Kafka's operation names).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::{binding_from_names, filter_from_names, AclBinding, AclFilter, WILDCARD};
use crate::frontend::http::error::{ApiError, ErrorBody, JsonBody, QueryParams};
use crate::frontend::http::{Caller, Http, Shared};

/// The routes of this module.
pub fn routes() -> OpenApiRouter<Arc<Http>> {
    OpenApiRouter::new().routes(routes!(list_acls, add_acl, remove_acls))
}

/// One ACL.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclJson {
    /// `User:NAME`, or `User:*` for everyone.
    pub principal: String,
    /// The client's IP address; `*` (the default) for every host.
    #[serde(default = "any_host")]
    pub host: String,
    /// `topic`, `group`, `transactional-id`, `cluster`, `queue` or `exchange`.
    pub resource_type: String,
    /// `literal` (the default: the name, or `*` for every name) or `prefixed`.
    #[serde(default = "literal")]
    pub pattern_type: String,
    /// The resource name or prefix.
    pub name: String,
    /// Kafka's operation name: `Read`, `Write`, `Create`, `Delete`, `Alter`, `Describe`,
    /// `DescribeConfigs`, `AlterConfigs`, `ClusterAction`, `IdempotentWrite` or `All`.
    pub operation: String,
    /// `allow` or `deny`.
    pub permission: String,
}

fn any_host() -> String {
    WILDCARD.to_string()
}

fn literal() -> String {
    "literal".to_string()
}

/// ACLs.
#[derive(Debug, Serialize, ToSchema)]
pub struct AclList {
    pub acls: Vec<AclJson>,
}

/// A filter over the ACLs: each field given must match; `pattern` is `any` (the default),
/// `match` (the ACLs that apply to the named resource), `literal` or `prefixed`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AclQuery {
    pub principal: Option<String>,
    pub host: Option<String>,
    pub resource_type: Option<String>,
    pub pattern: Option<String>,
    pub name: Option<String>,
    pub operation: Option<String>,
    pub permission: Option<String>,
}

/// Lists the ACLs a filter selects.
#[utoipa::path(
    get,
    path = "/acls",
    tag = "acls",
    params(AclQuery),
    responses(
        (status = 200, description = "The ACLs", body = AclList),
        (status = 400, description = "A malformed filter", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
async fn list_acls(
    State(http): Shared,
    caller: Caller,
    QueryParams(query): QueryParams<AclQuery>,
) -> Result<Response, ApiError> {
    let filter = filter(query)?;
    let acls = http
        .broker()?
        .describe_acls(&caller, &filter)?
        .iter()
        .map(json)
        .collect();
    Ok(Json(AclList { acls }).into_response())
}

/// Adds an ACL (durable before the answer; adding one that exists changes nothing).
#[utoipa::path(
    post,
    path = "/acls",
    tag = "acls",
    request_body = AclJson,
    responses(
        (status = 201, description = "Added", body = AclJson),
        (status = 400, description = "A malformed ACL, or one that means nothing", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
async fn add_acl(
    State(http): Shared,
    caller: Caller,
    JsonBody(body): JsonBody<AclJson>,
) -> Result<Response, ApiError> {
    let acl = binding(&body)?;
    http.broker()?
        .create_acls(&caller, vec![acl.clone()])
        .await?;
    Ok((StatusCode::CREATED, Json(json(&acl))).into_response())
}

/// Removes the ACLs a filter selects and lists them.
#[utoipa::path(
    delete,
    path = "/acls",
    tag = "acls",
    params(AclQuery),
    responses(
        (status = 200, description = "The ACLs removed", body = AclList),
        (status = 400, description = "A malformed filter", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
async fn remove_acls(
    State(http): Shared,
    caller: Caller,
    QueryParams(query): QueryParams<AclQuery>,
) -> Result<Response, ApiError> {
    let filter = filter(query)?;
    let removed = http.broker()?.delete_acls(&caller, vec![filter]).await?;
    let acls = removed.iter().flatten().map(json).collect();
    Ok(Json(AclList { acls }).into_response())
}

fn json(acl: &AclBinding) -> AclJson {
    AclJson {
        principal: acl.principal.clone(),
        host: acl.host.clone(),
        resource_type: acl.resource_type.name().to_string(),
        pattern_type: acl.pattern_type.name().to_string(),
        name: acl.name.clone(),
        operation: acl.operation.name().to_string(),
        permission: acl.permission.name().to_string(),
    }
}

fn binding(body: &AclJson) -> Result<AclBinding, ApiError> {
    Ok(binding_from_names(
        &body.principal,
        &body.host,
        &body.resource_type,
        &body.pattern_type,
        &body.name,
        &body.operation,
        &body.permission,
    )?)
}

fn filter(query: AclQuery) -> Result<AclFilter, ApiError> {
    Ok(filter_from_names(
        query.principal,
        query.host,
        query.resource_type.as_deref(),
        query.pattern.as_deref().unwrap_or("any"),
        query.name,
        query.operation.as_deref(),
        query.permission.as_deref(),
    )?)
}
