//! Wharf's wire protocol and record batch format.
//!
//! This crate is pure: it encodes and decodes bytes and never touches sockets, files or a
//! runtime. The broker and the client both depend on it and never on each other.
