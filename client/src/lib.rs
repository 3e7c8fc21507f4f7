//! The Wharf client library.
