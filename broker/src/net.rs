//! Network machinery every front end shares: the accept loop with its connection cap
//! ([`listener`]) and the connection driver ([`connection`]) that reads requests, runs each
//! one's ordered phase before reading the next, lets the rest complete concurrently, bounds
//! what is in flight, and writes responses in request order with pushed frames between
//! them. A front end supplies only its codec and its translation (a [`connection::Protocol`]).
//! [`tls`] puts TLS under any listener: the connection driver is generic over its byte
//! stream ([`connection::Transport`]), so TCP and TLS connections get the same machinery.
//! [`limits`] counts connections per client address for every listener.
//!
//! **Architecture invariant:** only `net` touches sockets; it knows no protocol and no
//! domain rule.

pub mod connection;
pub mod limits;
pub mod listener;
pub mod tls;
