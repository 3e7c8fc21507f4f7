//! The one place domain errors become HTTP statuses, and every error answer's JSON body:
//! `{"error": "<kind>", "message": "<sentence>"}`. `kind` is stable (clients may match on
//! it); `message` is for people.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::{
    AclError, Denied, GroupAdminError, GroupError, QueueError, StreamError, TopicError, UserError,
};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable name of the error.
    pub kind: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error answer.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401: no valid credentials (with the challenge added by the authentication layer).
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 503 while the core recovers.
    pub fn recovering() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "recovering",
            "the broker is recovering its logs",
        )
    }

    /// 503 after [`super::REQUEST_TIMEOUT`].
    pub fn timed_out(limit: Duration) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timed_out",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable name of the error (`not_found`, `bad_json`, `already_exists`, ...).
    pub error: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.kind,
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "unauthorized", denied.to_string())
    }
}

impl From<StreamError> for ApiError {
    fn from(error: StreamError) -> ApiError {
        let message = error.to_string();
        match error {
            StreamError::Unauthorized(denied) => ApiError::from(denied),
            StreamError::TopicUnavailable(cause) => match &*cause {
                StreamError::Unauthorized(denied) => ApiError::from(denied.clone()),
                StreamError::UnknownTopic(_) | StreamError::AutoCreateDisabled(_) => {
                    ApiError::not_found(message)
                }
                _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message),
            },
            StreamError::UnknownTopic(_)
            | StreamError::UnknownPartition { .. }
            | StreamError::AutoCreateDisabled(_) => ApiError::not_found(message),
            StreamError::PartitionOutOfRange { .. } => ApiError::not_found(message),
            StreamError::Topic(error) => ApiError::from(error),
            StreamError::InternalTopic(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "internal_topic", message)
            }
            StreamError::MessageTooLarge { .. } | StreamError::RecordListTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "message_too_large", message)
            }
            StreamError::TimedOut { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timed_out", message)
            }
            StreamError::Cluster { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster", message)
            }
            StreamError::NotLeader { .. } => {
                ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", message)
            }
            StreamError::Storage(_) | StreamError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
            }
            _ => ApiError::bad_request(message),
        }
    }
}

impl From<TopicError> for ApiError {
    fn from(error: TopicError) -> ApiError {
        let message = error.to_string();
        match error {
            TopicError::Unknown(_) => ApiError::not_found(message),
            TopicError::AlreadyExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            TopicError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
            }
            _ => ApiError::bad_request(message),
        }
    }
}

/// 503 `not_coordinator`: another node of the cluster coordinates groups (the message
/// names it); ask that node.
fn not_coordinator(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_coordinator", message)
}

impl From<GroupError> for ApiError {
    fn from(error: GroupError) -> ApiError {
        ApiError::from(GroupAdminError::Group(error))
    }
}

impl From<GroupAdminError> for ApiError {
    fn from(error: GroupAdminError) -> ApiError {
        let message = error.to_string();
        match error {
            GroupAdminError::Group(GroupError::GroupNotFound(_)) => ApiError::not_found(message),
            GroupAdminError::Group(GroupError::Unauthorized(denied)) => ApiError::from(denied),
            GroupAdminError::Group(GroupError::NotEmpty { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "group_not_empty", message)
            }
            GroupAdminError::Group(GroupError::NotCoordinator { .. }) => not_coordinator(message),
            GroupAdminError::Group(_) => ApiError::bad_request(message),
            GroupAdminError::Stream(error) => ApiError::from(error),
            GroupAdminError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
            }
        }
    }
}

impl From<AclError> for ApiError {
    fn from(error: AclError) -> ApiError {
        let message = error.to_string();
        match error {
            AclError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_acl", message),
            AclError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
            }
            AclError::Unauthorized(denied) => ApiError::from(denied),
            AclError::Cluster { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster", message)
            }
        }
    }
}

impl From<UserError> for ApiError {
    fn from(error: UserError) -> ApiError {
        let message = error.to_string();
        match error {
            UserError::NotFound { .. } => ApiError::not_found(message),
            UserError::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            UserError::TooMany { .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "too_many", message)
            }
            UserError::InvalidName { .. } | UserError::InvalidCredential { .. } => {
                ApiError::bad_request(message)
            }
            UserError::Locked { .. } | UserError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
            }
            UserError::Unauthorized(denied) => ApiError::from(denied),
            UserError::Cluster { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster", message)
            }
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> ApiError {
        let message = error.to_string();
        match error {
            QueueError::UnknownQueue(_) | QueueError::UnknownExchange(_) => {
                ApiError::not_found(message)
            }
            QueueError::DeclareMismatch(_) | QueueError::ExchangeDiffers { .. } => {
                ApiError::new(StatusCode::CONFLICT, "declare_mismatch", message)
            }
            QueueError::Precondition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "precondition_failed", message)
            }
            QueueError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
            }
            QueueError::Gone(_) => ApiError::new(StatusCode::GONE, "gone", message),
            QueueError::Cluster { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster", message)
            }
            QueueError::Unauthorized(denied) => ApiError::from(denied),
            _ => ApiError::bad_request(message),
        }
    }
}

/// A JSON request body whose every rejection (not JSON, the wrong shape, no
/// `Content-Type: application/json`, too large) is an [`ApiError`] with a JSON body: 400, or
/// 413 and 415 where those say more.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    let message = rejection.body_text();
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_json", message)
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, "bad_json", message),
    }
}

/// Path parameters whose rejection (a partition that is not a number) is a 400 [`ApiError`].
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParams(value)),
            Err(rejection) => Err(path_rejection(&rejection)),
        }
    }
}

fn path_rejection(rejection: &PathRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}

/// Query parameters whose rejection is a 400 [`ApiError`].
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}
