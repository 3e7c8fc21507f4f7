//! Arbitrary bytes as the body of one frame on the cluster's internal listener
//! (broker/src/cluster/transport.rs `decode_envelope`): the encoding octet, then the
//! MessagePack of an `Envelope` with its `RaftRpc` (openraft's AppendEntries, Vote and
//! snapshot messages, Wharf's metadata commands, the replicated partitions' RPCs with their
//! record bytes). Property: no input panics or aborts; a decoded envelope is formatted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_broker::cluster::transport::decode_envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode_envelope(data) {
        let _ = format!("{envelope:?}");
    }
});
