//! The OpenAPI 3.1 document of `/api/v1`, served at `GET /api/v1/openapi.json` and committed
//! as docs/openapi.json. It is generated from the code: each handler carries its
//! `#[utoipa::path]` description and each body type derives its schema, and the handlers are
//! registered on the router through utoipa-axum, which adds a route and its description in
//! one step (a route cannot be served undocumented). A test keeps docs/openapi.json equal to
//! what the code generates.

use utoipa::OpenApi;

use crate::frontend::http::error::ErrorBody;
use crate::frontend::http::stream::{HeaderDoc, StreamRecordDoc};

/// What the document says beyond the routes: title, version, tags, and the schemas only
/// the streams' messages use.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Wharf HTTP API",
        description = "The admin, records and streaming API of wharfd's HTTP listener (docs/HTTP.md). Every error answer is an ErrorBody.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, StreamRecordDoc, HeaderDoc)),
    tags(
        (name = "broker", description = "The broker's status and configuration"),
        (name = "topics", description = "Create, list, describe, alter and delete topics"),
        (name = "groups", description = "Consumer groups with their lag"),
        (name = "queues", description = "Queues: declare, counts, purge, get, delete, WebSocket consumers"),
        (name = "exchanges", description = "Exchanges and bindings; publish with confirms"),
        (name = "records", description = "Produce records; SSE and WebSocket streams of a partition"),
        (name = "acls", description = "Access control lists: add, list and remove (the same ACLs as Kafka's CreateAcls and wharf acl)"),
        (name = "security", description = "Bearer tokens of the logged-in user (docs/SECURITY.md)"),
    )
)]
pub struct ApiDoc;

/// The document's base: [`ApiDoc`] with the crate's version.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    document
}

/// The whole document: the base and every `/api/v1` route.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, document) = super::api_routes().split_for_parts();
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/openapi.json, relative to this crate.
    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

    #[test]
    fn the_committed_document_is_what_the_code_generates() {
        // Goal: docs/openapi.json never drifts from the routes. After a change to a route or
        // a body type, regenerate it with
        //   WHARF_WRITE_OPENAPI=1 cargo test -p wharf-broker openapi
        let generated = document()
            .to_pretty_json()
            .expect("the document serializes")
            + "\n";
        if std::env::var_os("WHARF_WRITE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, &generated).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run WHARF_WRITE_OPENAPI=1 cargo test -p wharf-broker openapi"
        );
    }

    #[test]
    fn every_api_route_is_in_the_document_with_its_methods() {
        let document = document();
        let paths = &document.paths.paths;
        for (path, method) in [
            ("/api/v1/topics", "get"),
            ("/api/v1/topics", "post"),
            ("/api/v1/topics/{topic}", "delete"),
            ("/api/v1/topics/{topic}/configs", "patch"),
            ("/api/v1/groups/{group}", "get"),
            ("/api/v1/queues/{queue}/purge", "post"),
            (
                "/api/v1/topics/{topic}/partitions/{partition}/records",
                "post",
            ),
            (
                "/api/v1/topics/{topic}/partitions/{partition}/stream",
                "get",
            ),
            ("/api/v1/queues/{queue}/ws", "get"),
            ("/api/v1/queues/{queue}/stream", "get"),
            ("/api/v1/acls", "get"),
            ("/api/v1/acls", "post"),
            ("/api/v1/acls", "delete"),
            ("/api/v1/tokens", "get"),
            ("/api/v1/tokens", "post"),
            ("/api/v1/tokens/{id}", "delete"),
        ] {
            let item = paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} is not in the document"));
            let operation = match method {
                "get" => item.get.as_ref(),
                "post" => item.post.as_ref(),
                "delete" => item.delete.as_ref(),
                "patch" => item.patch.as_ref(),
                _ => None,
            };
            assert!(operation.is_some(), "{method} {path} is not documented");
        }
        assert_eq!(paths.len(), 27, "{:?}", paths.keys().collect::<Vec<_>>());
        let schemas = &document.components.as_ref().expect("components").schemas;
        for schema in [
            "ErrorBody",
            "TopicDetail",
            "CreateTopic",
            "ProduceBody",
            "GroupDetail",
        ] {
            assert!(schemas.contains_key(schema), "no schema {schema}");
        }
    }
}
