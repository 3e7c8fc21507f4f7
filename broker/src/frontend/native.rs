//! The native front end: Wharf's framed protocol (`wharf-protocol`) over the shared
//! connection machinery.
//!
//! - [`translate`]: one small handler per api, each decoding nothing and deciding nothing:
//!   request → one core call → response.
//! - [`error_code`]: the one place domain errors become wire [`ErrorCode`]s.
//!
//! This file is the codec side: frame decoding with the header checks, and error frames for
//! what cannot be decoded.

pub mod acls;
pub mod cluster;
pub mod error_code;
pub mod sasl;
pub mod translate;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use tokio::sync::mpsc;
use wharf_protocol::api::{check_header, encode_response};
use wharf_protocol::frame::{
    decode_frame, encode_frame, FrameHeader, FRAME_HEADER_BYTES, FRAME_LENGTH_BYTES,
};
use wharf_protocol::messages::BrokerInfo;
use wharf_protocol::wire::Wire;
use wharf_protocol::{DecodeError, ErrorCode, Request, Response};

use crate::config::parse_host_port;
use crate::core::{AuthPolicy, Broker, Session, Transport};
use crate::metrics;
use crate::net::connection::{BoxFuture, Completion, Fatal, Protocol};

/// Node id of this broker in metadata answers (one broker for now).
pub const NODE_ID: i32 = 0;
/// Bytes before a frame's body: the length field and the header.
const FRAME_PREFIX_BYTES: usize = FRAME_LENGTH_BYTES + FRAME_HEADER_BYTES;

/// The native protocol over a broker.
#[derive(Debug)]
pub struct Native {
    broker: Arc<Broker>,
    frame_bytes_max: u32,
    /// What metadata answers tell clients to connect to.
    advertised: BrokerInfo,
    /// Whether connections must log in (issue #18).
    auth: AuthPolicy,
    /// Whether this listener's connections are TLS, for the mechanism rules (PLAIN only
    /// over TLS): [`Native::over`] sets it for an `ssl://` or `sasl_ssl://` listener.
    transport: Transport,
}

impl Native {
    /// The native front end of `broker` on a listener bound to `local_addr`: it refuses
    /// frames over `frame_bytes_max` and tells clients to reconnect to `advertised_address`
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
    ) -> Result<Native, String> {
        let (host, port) = match advertised_address {
            Some(address) => parse_host_port(address)?,
            None => {
                if local_addr.ip().is_unspecified() {
                    tracing::warn!(%local_addr, "listening on all interfaces without advertised_address: clients on other hosts cannot reconnect to what metadata answers");
                }
                (local_addr.ip().to_string(), local_addr.port())
            }
        };
        Ok(Native {
            broker,
            frame_bytes_max,
            advertised: BrokerInfo {
                node_id: NODE_ID,
                host,
                port,
            },
            auth,
            transport: Transport::Plaintext,
        })
    }

    /// The same front end on a listener whose connections use `transport`.
    pub fn over(self, transport: Transport) -> Native {
        Native { transport, ..self }
    }
}

/// What a native connection's requests share: the core session (owner of exclusive queues
/// and consumers) and the sender of pushed frames (deliveries).
#[derive(Debug)]
pub struct NativeConnection {
    session: Arc<Session>,
    push: mpsc::Sender<BytesMut>,
    peer: SocketAddr,
    opened: tokio::time::Instant,
    /// Only the ordered phase touches it, one request at a time: never contended.
    sasl: Mutex<sasl::SaslState>,
}

/// A decoded native request with its frame header (for the response's correlation id).
#[derive(Debug)]
pub struct NativeRequest {
    header: FrameHeader,
    request: Request,
}

impl Protocol for Native {
    type Request = NativeRequest;
    type Connection = NativeConnection;

    fn open(&self, push: mpsc::Sender<BytesMut>, peer: std::net::SocketAddr) -> NativeConnection {
        metrics::NATIVE.connection_opened();
        NativeConnection {
            session: Arc::new(Session::at(peer)),
            push,
            peer,
            opened: tokio::time::Instant::now(),
            sasl: Mutex::new(sasl::SaslState::Start),
        }
    }

    fn open_refused(
        &self,
        _push: mpsc::Sender<BytesMut>,
        _peer: std::net::SocketAddr,
        _refusal: &crate::net::limits::Refusal,
    ) -> Option<Self::Connection> {
        // Closed without a byte, as Kafka closes a connection over max.connections.per.ip.
        metrics::NATIVE.connection_refused();
        None
    }

    fn muted_until(&self, connection: &NativeConnection) -> Option<tokio::time::Instant> {
        connection.session.throttled_until()
    }

    fn until_closed<'a>(&'a self, connection: &'a NativeConnection) -> BoxFuture<'a, ()> {
        Box::pin(
            self.auth
                .until_timed_out(&connection.session, connection.peer, connection.opened),
        )
    }

    fn decode(
        &self,
        _connection: &NativeConnection,
        buffer: &mut BytesMut,
    ) -> Result<Option<NativeRequest>, Fatal> {
        let frame = match decode_frame(buffer, self.frame_bytes_max) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(error) => {
                let response = peek_header(buffer)
                    .map(|header| error_frame(header, error_code_of(&error), &error.to_string()));
                return Err(Fatal {
                    response,
                    reason: error.to_string(),
                });
            }
        };
        let header = frame.header;
        match check_header(&header).and_then(|key| Request::decode(key, frame.body)) {
            Ok(request) => Ok(Some(NativeRequest { header, request })),
            Err(error) => Err(Fatal {
                response: Some(error_frame(
                    header,
                    error_code_of(&error),
                    &error.to_string(),
                )),
                reason: format!("undecodable request (api key {}): {error}", header.api_key),
            }),
        }
    }

    // The ordered phase yields the completion on purpose: the connection awaits the first
    // before it reads the next request and runs the second as its own task.
    #[allow(clippy::async_yields_async)]
    fn handle<'a>(
        &'a self,
        connection: &'a NativeConnection,
        request: NativeRequest,
    ) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            let header = request.header;
            let started = std::time::Instant::now();
            let response = translate::handle(self, connection, request.request, header).await;
            let completion: Completion = Box::pin(async move {
                let response = response.await;
                // One observation per request, when its answer is ready (a produce with
                // acks = none has none and counts as a success).
                let error = response
                    .as_ref()
                    .map(error_code::first_error)
                    .filter(|code| !code.is_ok());
                metrics::NATIVE.request(
                    header.api_key,
                    error.map(ErrorCode::code),
                    started.elapsed(),
                );
                let response = response?;
                let mut out = BytesMut::new();
                encode_response(&response, header, &mut out);
                Some(out)
            });
            completion
        })
    }

    fn close<'a>(&'a self, connection: &'a NativeConnection) -> BoxFuture<'a, ()> {
        // The connection's consumers go away with it: their unacknowledged deliveries
        // return to their queues, marked redelivered.
        metrics::NATIVE.connection_closed();
        Box::pin(self.broker.close_session(&connection.session))
    }
}

/// The frame header at the front of `buffer`, if enough bytes are there.
fn peek_header(buffer: &BytesMut) -> Option<FrameHeader> {
    if buffer.len() < FRAME_PREFIX_BYTES {
        return None;
    }
    Some(FrameHeader {
        api_key: u16::from_be_bytes([buffer[4], buffer[5]]),
        api_version: u16::from_be_bytes([buffer[6], buffer[7]]),
        correlation_id: u32::from_be_bytes([buffer[8], buffer[9], buffer[10], buffer[11]]),
    })
}

fn error_code_of(error: &DecodeError) -> ErrorCode {
    match error {
        DecodeError::UnknownApiKey { .. } => ErrorCode::UnknownApiKey,
        DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        DecodeError::FrameTooLarge { .. } => ErrorCode::MessageTooLarge,
        _ => ErrorCode::InvalidRequest,
    }
}

/// An error response for `header`: a typed body where the api is known, otherwise the common
/// prefix of every response body (error code and message).
fn error_frame(header: FrameHeader, code: ErrorCode, message: &str) -> BytesMut {
    let mut out = BytesMut::new();
    match wharf_protocol::ApiKey::from_code(header.api_key) {
        Some(key) => encode_response(
            &Response::error_only(key, code, message.to_string()),
            header,
            &mut out,
        ),
        None => encode_frame(header, &mut out, |body| {
            body.put_u16(code.code());
            Some(message.to_string()).encode(body);
        }),
    }
    out
}
