//! The Wharf broker library.
