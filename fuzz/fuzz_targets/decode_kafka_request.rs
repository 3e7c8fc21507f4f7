//! Arbitrary bytes as one Kafka request frame after its size prefix (header, then body)
//! through the Kafka front end's decoder (broker/src/frontend/kafka.rs `decode_request`):
//! the header checks, the version table, and the `kafka-protocol` crate's decoders.
//! Property: no input panics or aborts.
//!
//! The crate's array decoders reserve room for an array's claimed length before reading its
//! elements (`Vec::with_capacity`), so a 30-byte request can ask for a reservation of
//! hundreds of GB that is released when the decode fails a few bytes later. `wharfd`'s
//! allocator (mimalloc) takes such a reservation as untouched virtual memory (MAP_NORESERVE)
//! under Linux's default overcommit, and nothing is resident (docs/KAFKA.md, "Bad input").
//! This target models that: allocations of 1 GiB or more are anonymous MAP_NORESERVE
//! mappings; everything else goes to the sanitized system allocator.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wharf_broker::frontend::kafka::decode_request;

/// Allocations at least this large are reserved, not backed.
const RESERVE_BYTES_MIN: usize = 1 << 30;

struct Reserving;

// SAFETY: small allocations are System's; large ones are fresh page-aligned anonymous
// mappings of at least `layout.size()` bytes (page alignment covers every Rust alignment
// below the page size; larger alignments go to System), unmapped with the same size.
unsafe impl GlobalAlloc for Reserving {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() < RESERVE_BYTES_MIN || layout.align() > 4096 {
            return unsafe { System.alloc(layout) };
        }
        let pointer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if pointer == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            pointer.cast()
        }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if layout.size() < RESERVE_BYTES_MIN || layout.align() > 4096 {
            unsafe { System.dealloc(pointer, layout) };
        } else {
            unsafe { libc::munmap(pointer.cast(), layout.size()) };
        }
    }
}

#[global_allocator]
static ALLOCATOR: Reserving = Reserving;

fuzz_target!(|data: &[u8]| {
    let _ = decode_request(Bytes::copy_from_slice(data));
});
