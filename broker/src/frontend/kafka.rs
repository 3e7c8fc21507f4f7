//! The Kafka front end: Kafka's wire protocol (`--kafka-listen`, 127.0.0.1:9092) over the
//! shared connection machinery, so Kafka clients and tools work against `wharfd` unchanged.
//!
//! - [`handlers`]: one small handler per api: request → core calls → response.
//! - [`error_code`]: the one place domain errors become Kafka error codes.
//!
//! This file is the codec side: Kafka's size-prefixed frames, the request header, the
//! versions this build speaks ([`SUPPORTED_APIS`]), and what a request that cannot be served
//! gets. Codecs come from the `kafka-protocol` crate (generated from Kafka's own message
//! schemas); record batches stay `Bytes`, so produce stores and fetch serves the client's
//! bytes unchanged.

pub mod acls;
pub mod admin;
pub mod cluster;
pub mod error_code;
pub mod groups;
pub mod handlers;
pub mod sasl;
pub mod txn;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;
use tokio::sync::mpsc;

use crate::config::parse_host_port;
use crate::core::{AuthPolicy, Broker, Session};
use crate::metrics;
use crate::net::connection::{BoxFuture, Completion, Fatal, Protocol};

/// Node id of this broker in Kafka metadata answers (one broker for now).
pub const NODE_ID: i32 = 0;
/// The cluster id Kafka metadata answers carry (one broker for now).
pub const CLUSTER_ID: &str = "wharf";
/// Bytes of the size prefix of every Kafka frame.
const SIZE_BYTES: usize = 4;
/// The fixed part of every request header: api key, api version, correlation id.
const HEADER_FIXED_BYTES: usize = 8;

/// Every api this build serves with its version range; anything else is left out of
/// ApiVersions rather than advertised and broken.
///
/// Produce v0–v2 are advertised and refused on use with UNSUPPORTED_VERSION, as Kafka does
/// since KAFKA-18659: librdkafka turns compression off when the advertised minimum is 3.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeAcls, 0, 3),
    (ApiKey::CreateAcls, 0, 3),
    (ApiKey::DeleteAcls, 0, 3),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    // Authentication (issue #18): v1 only (v0 frames the SASL tokens without Kafka headers).
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
];

/// What a connection may send before it has logged in when authentication is required:
/// version negotiation and the login. Anything else closes the connection, as Kafka's SASL
/// authenticator does (the client reports the broker closed it during authentication).
const BEFORE_LOGIN: [ApiKey; 3] = [
    ApiKey::ApiVersions,
    ApiKey::SaslHandshake,
    ApiKey::SaslAuthenticate,
];

/// Room reserved for a response's fields besides its record batches.
const RESPONSE_OVERHEAD_BYTES: usize = 4096;

/// The lowest Produce version that is served; lower ones are refused.
const PRODUCE_VERSION_MIN_SERVED: i16 = 3;

/// The supported range of `api_key`, if it is served.
pub fn supported_range(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|(_, min, max)| (*min, *max))
}

/// The Kafka protocol over a broker.
#[derive(Debug)]
pub struct Kafka {
    broker: Arc<Broker>,
    frame_bytes_max: u32,
    /// What metadata answers tell clients to connect to.
    advertised: (String, u16),
    /// Whether connections must log in (issue #18).
    auth: AuthPolicy,
}

impl Kafka {
    /// The Kafka front end of `broker` on a listener bound to `local_addr`: it refuses frames
    /// over `frame_bytes_max` and tells clients to connect to `advertised_address`
    /// (`HOST:PORT`), or to the bound address when there is none.
    ///
    /// # Errors
    /// A message naming the bad advertised address.
    pub fn new(
        broker: Arc<Broker>,
        frame_bytes_max: u32,
        advertised_address: Option<&str>,
        local_addr: SocketAddr,
        auth: AuthPolicy,
    ) -> Result<Kafka, String> {
        let advertised = match advertised_address {
            Some(address) => {
                parse_host_port(address).map_err(|error| format!("kafka_advertised: {error}"))?
            }
            None => {
                if local_addr.ip().is_unspecified() {
                    tracing::warn!(%local_addr, "Kafka listener on all interfaces without kafka_advertised: clients on other hosts cannot connect to what metadata answers");
                }
                (local_addr.ip().to_string(), local_addr.port())
            }
        };
        Ok(Kafka {
            broker,
            frame_bytes_max,
            advertised,
            auth,
        })
    }
}

/// What a Kafka connection's requests share: its core session and its SASL exchange.
#[derive(Debug)]
pub struct KafkaConnection {
    session: Arc<Session>,
    peer: SocketAddr,
    opened: tokio::time::Instant,
    /// Only the ordered phase touches it, one request at a time: never contended.
    sasl: Mutex<sasl::SaslState>,
}

/// A decoded Kafka request with what its response needs.
#[derive(Debug)]
pub struct KafkaRequest {
    api_key: ApiKey,
    /// The header's client id (empty when null).
    client_id: String,
    version: i16,
    correlation_id: i32,
    body: Body,
}

/// A request body, or why it is refused without being served.
#[derive(Debug)]
enum Body {
    /// A request to serve.
    Serve(RequestKind),
    /// ApiVersions at a version this build does not speak: answered with
    /// UNSUPPORTED_VERSION and the supported ranges (in the v0 layout), never by closing.
    ApiVersionsUnsupported,
    /// Produce v0–v2: refused per partition with UNSUPPORTED_VERSION.
    ProduceTooOld(ProduceRequest),
}

impl Protocol for Kafka {
    type Request = KafkaRequest;
    type Connection = KafkaConnection;

    fn open(&self, _push: mpsc::Sender<BytesMut>, peer: std::net::SocketAddr) -> KafkaConnection {
        metrics::KAFKA.connection_opened();
        KafkaConnection {
            session: Arc::new(Session::at(peer)),
            peer,
            opened: tokio::time::Instant::now(),
            sasl: Mutex::new(sasl::SaslState::Start),
        }
    }

    fn until_closed<'a>(&'a self, connection: &'a KafkaConnection) -> BoxFuture<'a, ()> {
        Box::pin(
            self.auth
                .until_timed_out(&connection.session, connection.peer, connection.opened),
        )
    }

    fn open_refused(
        &self,
        _push: mpsc::Sender<BytesMut>,
        _peer: std::net::SocketAddr,
        _refusal: &crate::net::limits::Refusal,
    ) -> Option<Self::Connection> {
        // Closed without a byte, as Kafka closes a connection over max.connections.per.ip.
        metrics::KAFKA.connection_refused();
        None
    }

    fn muted_until(&self, connection: &KafkaConnection) -> Option<tokio::time::Instant> {
        connection.session.throttled_until()
    }

    fn decode(
        &self,
        connection: &KafkaConnection,
        buffer: &mut BytesMut,
    ) -> Result<Option<KafkaRequest>, Fatal> {
        if buffer.len() < SIZE_BYTES {
            return Ok(None);
        }
        let size = i32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
        let Ok(size) = usize::try_from(size) else {
            return Err(fatal(format!("negative frame size {size}")));
        };
        if size > self.frame_bytes_max as usize {
            return Err(fatal(format!(
                "frame of {size} bytes exceeds the maximum of {} bytes",
                self.frame_bytes_max
            )));
        }
        if size < HEADER_FIXED_BYTES {
            return Err(fatal(format!(
                "frame of {size} bytes is shorter than a request header"
            )));
        }
        if buffer.len() < SIZE_BYTES + size {
            buffer.reserve(SIZE_BYTES + size - buffer.len());
            return Ok(None);
        }
        buffer.advance(SIZE_BYTES);
        let frame = buffer.split_to(size).freeze();
        let request = decode_request(frame)?;
        if !BEFORE_LOGIN.contains(&request.api_key) && !connection.session.may_act(self.auth.mode) {
            return Err(fatal(format!(
                "{:?} request before authentication on a listener that requires it",
                request.api_key
            )));
        }
        Ok(Some(request))
    }

    // The ordered phase yields the completion on purpose: the connection awaits the first
    // before it reads the next request and runs the second as its own task.
    #[allow(clippy::async_yields_async)]
    fn handle<'a>(
        &'a self,
        connection: &'a KafkaConnection,
        request: KafkaRequest,
    ) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            let KafkaRequest {
                api_key,
                client_id,
                version,
                correlation_id,
                body,
            } = request;
            let api_slot = u16::try_from(api_key as i16).unwrap_or(u16::MAX);
            let started = std::time::Instant::now();
            let answer = match body {
                Body::Serve(body) => {
                    handlers::handle(self, connection, body, version, client_id).await
                }
                Body::ApiVersionsUnsupported => {
                    handlers::ready(handlers::api_versions_unsupported())
                }
                Body::ProduceTooOld(body) => {
                    let frame = refuse_old_produce(&body, version, correlation_id);
                    metrics::KAFKA.request(
                        api_slot,
                        error_code::metrics_slot(ResponseError::UnsupportedVersion.code()),
                        started.elapsed(),
                    );
                    return Box::pin(std::future::ready(Some(frame))) as Completion;
                }
            };
            let session = connection.session.clone();
            let completion: Completion = Box::pin(async move {
                let response = answer.await;
                // One observation per request, when its answer is ready (a produce with
                // acks = 0 has none and counts as a success).
                let error = response.as_ref().map_or(0, error_code::first_error);
                metrics::KAFKA.request(
                    api_slot,
                    error_code::metrics_slot(error),
                    started.elapsed(),
                );
                let mut response = response?;
                set_throttle_time(&mut response, &session);
                encode_response(api_key, version, correlation_id, &response)
            });
            completion
        })
    }

    fn close<'a>(&'a self, connection: &'a KafkaConnection) -> BoxFuture<'a, ()> {
        metrics::KAFKA.connection_closed();
        Box::pin(self.broker.close_session(&connection.session))
    }
}

/// A quota's throttle in the responses whose bytes count against one (KIP-219): the client
/// waits that long before its next request, and the connection reads nothing meanwhile.
fn set_throttle_time(response: &mut ResponseKind, session: &Session) {
    match response {
        ResponseKind::Produce(produce) => produce.throttle_time_ms = session.throttle_time_ms(),
        ResponseKind::Fetch(fetch) => fetch.throttle_time_ms = session.throttle_time_ms(),
        _ => {}
    }
}

fn fatal(reason: String) -> Fatal {
    Fatal {
        response: None,
        reason,
    }
}

/// Decodes one request frame (without its size prefix); also the entry point of the
/// `decode_kafka_request` fuzz target.
///
/// # Errors
/// [`Fatal`] (close the connection, as Kafka does: the stream cannot be trusted) for a frame
/// shorter than a request header, an unknown api key, an unsupported version of anything but
/// ApiVersions, or a header or body that does not decode.
pub fn decode_request(mut frame: Bytes) -> Result<KafkaRequest, Fatal> {
    if frame.len() < HEADER_FIXED_BYTES {
        return Err(fatal(format!(
            "frame of {} bytes is shorter than a request header",
            frame.len()
        )));
    }
    let api_key_code = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api_key) = ApiKey::try_from(api_key_code) else {
        return Err(fatal(format!("unknown api key {api_key_code}")));
    };
    let Some((min_version, max_version)) = supported_range(api_key) else {
        return Err(fatal(format!(
            "unsupported api {api_key:?} (key {api_key_code})"
        )));
    };
    let in_range = (min_version..=max_version).contains(&version);
    if api_key == ApiKey::ApiVersions && !in_range {
        return Ok(KafkaRequest {
            api_key,
            client_id: String::new(),
            version: 0,
            correlation_id,
            body: Body::ApiVersionsUnsupported,
        });
    }
    if !in_range {
        return Err(fatal(format!(
            "{api_key:?} version {version} is outside the supported {min_version}..={max_version}"
        )));
    }
    let header_version = api_key.request_header_version(version);
    let decoded = guarded(|| {
        let header =
            RequestHeader::decode(&mut frame, header_version).map_err(|error| error.to_string())?;
        let client_id = header
            .client_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        if api_key == ApiKey::Produce && version < PRODUCE_VERSION_MIN_SERVED {
            return decode_old_produce(frame).map(|body| (client_id, Body::ProduceTooOld(body)));
        }
        RequestKind::decode(api_key, &mut frame, version)
            .map(|body| (client_id, Body::Serve(body)))
            .map_err(|error| error.to_string())
    });
    match decoded {
        Ok((client_id, body)) => Ok(KafkaRequest {
            api_key,
            client_id,
            version,
            correlation_id,
            body,
        }),
        Err(error) => Err(fatal(format!(
            "undecodable {api_key:?} v{version} request: {error}"
        ))),
    }
}

/// Produce v0–v2 bodies are v3 bodies without the leading transactional id: decode them as
/// v3 with a null one, to answer each partition.
fn decode_old_produce(body: Bytes) -> Result<ProduceRequest, String> {
    let mut v3 = BytesMut::with_capacity(body.len() + 2);
    v3.put_i16(-1);
    v3.put_slice(&body);
    ProduceRequest::decode(&mut v3.freeze(), 3).map_err(|error| error.to_string())
}

/// Runs a decoder of untrusted bytes from a third-party crate, turning a panic into an error
/// so that no input can take the broker down.
fn guarded<T>(decode: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(decode)) {
        Ok(result) => result,
        Err(_) => Err("the decoder panicked".to_string()),
    }
}

/// A response frame: size, header (in the version the api and request version call for),
/// body. `None` (and a logged error) if the body cannot be encoded at `version`: a bug.
fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Option<BytesMut> {
    // A fetch answer is mostly its record batches: room for them up front, so they are
    // copied once instead of through a buffer that doubles as it grows.
    let records_bytes: usize = match body {
        ResponseKind::Fetch(fetch) => fetch
            .responses
            .iter()
            .flat_map(|topic| &topic.partitions)
            .map(|partition| partition.records.as_ref().map_or(0, Bytes::len))
            .sum(),
        _ => 0,
    };
    let mut out = BytesMut::with_capacity(RESPONSE_OVERHEAD_BYTES + records_bytes);
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(&mut out, body.header_version(version))
        .and_then(|()| body.encode(&mut out, version));
    if let Err(error) = encoded {
        tracing::error!(?api_key, version, %error, "cannot encode a Kafka response");
        return None;
    }
    let size = i32::try_from(out.len() - SIZE_BYTES).unwrap_or(i32::MAX);
    out[..SIZE_BYTES].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// The answer to a Produce v0–v2, which this build refuses: UNSUPPORTED_VERSION for every
/// partition, in the request's own (pre-v3) layout, which the codec crate does not write.
fn refuse_old_produce(request: &ProduceRequest, version: i16, correlation_id: i32) -> BytesMut {
    let error = ResponseError::UnsupportedVersion.code();
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(correlation_id);
    put_array_len(&mut out, request.topic_data.len());
    for topic in &request.topic_data {
        let name = topic.name.0.as_bytes();
        out.put_i16(i16::try_from(name.len()).unwrap_or(i16::MAX));
        out.put_slice(&name[..name.len().min(i16::MAX as usize)]);
        put_array_len(&mut out, topic.partition_data.len());
        for partition in &topic.partition_data {
            out.put_i32(partition.index);
            out.put_i16(error);
            out.put_i64(-1); // base offset
            if version >= 2 {
                out.put_i64(-1); // log append time
            }
        }
    }
    if version >= 1 {
        out.put_i32(0); // throttle time
    }
    let size = i32::try_from(out.len() - SIZE_BYTES).unwrap_or(i32::MAX);
    out[..SIZE_BYTES].copy_from_slice(&size.to_be_bytes());
    out
}

fn put_array_len(out: &mut BytesMut, len: usize) {
    out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
}
