//! The AMQP front end's request metrics (issue #17): the fixed tables that turn a method
//! into the `api` label and a reply code into the `code` label of `/metrics`, so both stay
//! bounded whatever a client sends.
//!
//! An AMQP request is one method a client sends. It is counted when the broker has handled
//! it: at its method frame, except basic.publish, which is counted (and timed) at the frame
//! that completes its content (the content header of an empty message, else the last body
//! frame), where the message is routed and stored. Errors are the reply codes of the
//! channel.close or connection.close the broker sends, attributed to the method they name.

use crate::metrics;

/// The methods a client sends (AMQP 0-9-1 with RabbitMQ's extensions), by (class, method)
/// id, in id order. Their index is the metrics' api slot; anything else is "other".
pub const METHODS: [(u16, u16, &str); 38] = [
    (10, 11, "connection.start-ok"),
    (10, 21, "connection.secure-ok"),
    (10, 31, "connection.tune-ok"),
    (10, 40, "connection.open"),
    (10, 50, "connection.close"),
    (10, 51, "connection.close-ok"),
    (10, 60, "connection.blocked"),
    (10, 61, "connection.unblocked"),
    (10, 70, "connection.update-secret"),
    (20, 10, "channel.open"),
    (20, 20, "channel.flow"),
    (20, 21, "channel.flow-ok"),
    (20, 40, "channel.close"),
    (20, 41, "channel.close-ok"),
    (30, 10, "access.request"),
    (40, 10, "exchange.declare"),
    (40, 20, "exchange.delete"),
    (40, 30, "exchange.bind"),
    (40, 40, "exchange.unbind"),
    (50, 10, "queue.declare"),
    (50, 20, "queue.bind"),
    (50, 30, "queue.purge"),
    (50, 40, "queue.delete"),
    (50, 50, "queue.unbind"),
    (60, 10, "basic.qos"),
    (60, 20, "basic.consume"),
    (60, 30, "basic.cancel"),
    (60, 40, "basic.publish"),
    (60, 70, "basic.get"),
    (60, 80, "basic.ack"),
    (60, 90, "basic.reject"),
    (60, 100, "basic.recover-async"),
    (60, 110, "basic.recover"),
    (60, 120, "basic.nack"),
    (85, 10, "confirm.select"),
    (90, 10, "tx.select"),
    (90, 20, "tx.commit"),
    (90, 30, "tx.rollback"),
];

/// The api slot of a method that is not in [`METHODS`] (or of an error that names none).
pub const OTHER_SLOT: u16 = METHODS.len() as u16;

/// The api slot of basic.publish.
pub const PUBLISH_SLOT: u16 = 27;
const _: () =
    assert!(METHODS[PUBLISH_SLOT as usize].0 == 60 && METHODS[PUBLISH_SLOT as usize].1 == 40);
const _: () = assert!(METHODS.len() < metrics::API_KEY_SLOTS);

/// The reply codes the broker closes a channel or connection with; their index is the
/// metrics' error slot (a code not listed counts as 541 INTERNAL_ERROR, the last).
pub const REPLY_CODES: [u16; 18] = [
    311, 312, 313, 320, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530, 540, 541,
];
const _: () = assert!(REPLY_CODES.len() < metrics::ERROR_CODE_SLOTS);

/// The api slot of method `class_id`.`method_id`.
pub fn method_slot(class_id: u16, method_id: u16) -> u16 {
    METHODS
        .binary_search_by_key(&(class_id, method_id), |(class, method, _)| {
            (*class, *method)
        })
        .map_or(OTHER_SLOT, |index| index as u16)
}

/// The `api` label of a slot.
pub fn method_name(slot: u16) -> &'static str {
    METHODS
        .get(usize::from(slot))
        .map_or("other", |(_, _, name)| *name)
}

/// The error slot of a reply code.
pub fn reply_slot(code: u16) -> u16 {
    let last = REPLY_CODES.len() - 1;
    REPLY_CODES
        .iter()
        .position(|known| *known == code)
        .unwrap_or(last) as u16
}

/// The reply code of an error slot.
pub fn reply_code(slot: u16) -> u16 {
    REPLY_CODES
        .get(usize::from(slot))
        .copied()
        .unwrap_or(REPLY_CODES[REPLY_CODES.len() - 1])
}

/// The `code` label of an error slot: RabbitMQ's name of the reply code.
pub fn reply_name(slot: u16) -> &'static str {
    super::error_code::code_name(reply_code(slot))
}

/// Counts a channel.close or connection.close the broker sends with `code`, for the method
/// `class_id`.`method_id` (0.0: none).
pub fn count_error(code: u16, class_id: u16, method_id: u16) {
    metrics::AMQP.error(method_slot(class_id, method_id), reply_slot(code));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_sorted_so_that_binary_search_finds_each() {
        for (index, (class, method, _)) in METHODS.iter().enumerate() {
            assert_eq!(usize::from(method_slot(*class, *method)), index);
        }
        assert_eq!(method_name(method_slot(60, 40)), "basic.publish");
        assert_eq!(method_slot(60, 41), OTHER_SLOT);
        assert_eq!(method_name(OTHER_SLOT), "other");
    }

    #[test]
    fn reply_codes_round_trip_and_unknown_ones_count_as_internal_error() {
        for code in REPLY_CODES {
            assert_eq!(reply_code(reply_slot(code)), code);
        }
        assert_eq!(reply_code(reply_slot(999)), 541);
    }
}
