//! Queues over the wire against the real `wharfd` (raw protocol): declares, routing and
//! publisher confirms, push delivery within prefetch, acks, requeue with the redelivered
//! flag, redelivery to another connection when a consumer's connection drops, clear errors,
//! and durability across SIGKILL: 10,000 confirmed messages all come back; after acking
//! half, only the other half does.

use std::collections::BTreeSet;

use bytes::Bytes;
use integration_tests::{BrokerProcess, RawClient};
use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request, Response};

fn admin(client: &mut RawClient, request: Request) -> ErrorCode {
    match client.call(&request) {
        Response::DeclareExchange(answer)
        | Response::DeclareQueue(answer)
        | Response::BindQueue(answer)
        | Response::Ack(answer)
        | Response::Cancel(answer)
        | Response::DeleteQueue(answer) => answer.error,
        other => panic!("unexpected response {other:?}"),
    }
}

fn declare_queue(
    client: &mut RawClient,
    name: &str,
    durable: bool,
    args: &[(&str, &str)],
) -> ErrorCode {
    admin(
        client,
        Request::DeclareQueue(DeclareQueueRequest {
            name: name.to_string(),
            durable,
            args: args
                .iter()
                .map(|(key, value)| ConfigEntry {
                    key: key.to_string(),
                    value: value.to_string(),
                })
                .collect(),
        }),
    )
}

fn publish_request(exchange: &str, routing_key: &str, body: &str, mandatory: bool) -> Request {
    Request::Publish(PublishRequest {
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        mandatory,
        headers: Vec::new(),
        body: Bytes::copy_from_slice(body.as_bytes()),
    })
}

fn publish(
    client: &mut RawClient,
    exchange: &str,
    routing_key: &str,
    body: &str,
    mandatory: bool,
) -> PublishResponse {
    let Response::Publish(answer) =
        client.call(&publish_request(exchange, routing_key, body, mandatory))
    else {
        panic!("wrong response")
    };
    answer
}

fn subscribe(client: &mut RawClient, queue: &str, prefetch: u32) -> (u32, u64) {
    let correlation = client.send(&Request::Subscribe(SubscribeRequest {
        queue: queue.to_string(),
        prefetch,
    }));
    let (_, response) = client.receive();
    let Response::Subscribe(answer) = response else {
        panic!("wrong response")
    };
    assert_eq!(answer.error, ErrorCode::None, "{:?}", answer.error_message);
    (correlation, answer.consumer_id)
}

fn ack(
    client: &mut RawClient,
    queue: &str,
    consumer_id: u64,
    tag: u64,
    negative: bool,
    requeue: bool,
) -> ErrorCode {
    admin(
        client,
        Request::Ack(AckRequest {
            queue: queue.to_string(),
            consumer_id,
            delivery_tag: tag,
            multiple: false,
            negative,
            requeue,
        }),
    )
}

fn body(push: &DeliverPush) -> String {
    String::from_utf8(push.body.to_vec()).expect("utf-8")
}

#[test]
fn routed_publishes_are_confirmed_pushed_within_prefetch_and_redelivered_after_a_disconnect() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    let exchange = Request::DeclareExchange(DeclareExchangeRequest {
        name: "events".into(),
        kind: "topic".into(),
        durable: true,
    });
    assert_eq!(admin(&mut client, exchange), ErrorCode::None);
    assert_eq!(
        declare_queue(&mut client, "orders", true, &[]),
        ErrorCode::None
    );
    assert_eq!(
        declare_queue(&mut client, "orders", true, &[]),
        ErrorCode::None,
        "idempotent"
    );
    assert_eq!(
        declare_queue(&mut client, "orders", true, &[("max-length", "5")]),
        ErrorCode::PreconditionFailed
    );
    let bind = Request::BindQueue(BindQueueRequest {
        queue: "orders".into(),
        exchange: "events".into(),
        routing_key: "order.*".into(),
        headers: Vec::new(),
    });
    assert_eq!(admin(&mut client, bind), ErrorCode::None);

    for index in 0..4 {
        let confirmed = publish(
            &mut client,
            "events",
            "order.created",
            &format!("o{index}"),
            false,
        );
        assert_eq!(confirmed.queues, vec!["orders".to_string()]);
    }
    assert_eq!(
        publish(&mut client, "events", "invoice.paid", "x", true).error,
        ErrorCode::Unroutable
    );
    assert_eq!(
        publish(&mut client, "events", "invoice.paid", "x", false).error,
        ErrorCode::None
    );

    // A consumer with prefetch 2 gets exactly two deliveries until it acks.
    let mut consumer = RawClient::connect(broker.addr());
    let (correlation, consumer_id) = subscribe(&mut consumer, "orders", 2);
    let first = consumer.next_push();
    let second = consumer.next_push();
    assert_eq!(
        first.0, correlation,
        "pushes carry the subscribe's correlation id"
    );
    assert_eq!(
        (body(&first.1), body(&second.1)),
        ("o0".to_string(), "o1".to_string())
    );
    assert!(!first.1.redelivered);
    assert_eq!(
        ack(
            &mut consumer,
            "orders",
            consumer_id,
            first.1.delivery_tag,
            false,
            false
        ),
        ErrorCode::None
    );
    assert_eq!(
        ack(
            &mut consumer,
            "orders",
            consumer_id,
            first.1.delivery_tag,
            false,
            false
        ),
        ErrorCode::UnknownDeliveryTag
    );
    let third = consumer.next_push();
    assert_eq!(body(&third.1), "o2");
    // Requeue: it comes back marked redelivered.
    assert_eq!(
        ack(
            &mut consumer,
            "orders",
            consumer_id,
            second.1.delivery_tag,
            true,
            true
        ),
        ErrorCode::None
    );
    let again = consumer.next_push();
    assert_eq!(body(&again.1), "o1");
    assert!(again.1.redelivered);
    // The consumer's connection drops with deliveries unacknowledged: another consumer gets
    // them, redelivered.
    drop(consumer);
    let mut other = RawClient::connect(broker.addr());
    let (_, other_id) = subscribe(&mut other, "orders", 0);
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        let (_, push) = other.next_push();
        if body(&push) != "o3" {
            assert!(push.redelivered, "{} should be redelivered", body(&push));
        }
        seen.insert(body(&push));
        assert_eq!(
            ack(
                &mut other,
                "orders",
                other_id,
                push.delivery_tag,
                false,
                false
            ),
            ErrorCode::None
        );
    }
    assert_eq!(
        seen,
        ["o1", "o2", "o3"]
            .iter()
            .map(|value| value.to_string())
            .collect()
    );
    let Response::Subscribe(missing) = other.call(&Request::Subscribe(SubscribeRequest {
        queue: "nope".into(),
        prefetch: 1,
    })) else {
        panic!("wrong response")
    };
    assert_eq!(missing.error, ErrorCode::UnknownQueue);
}

fn drain(client: &mut RawClient, queue: &str, count: usize) -> Vec<(u64, u64, String)> {
    let (_, consumer_id) = subscribe(client, queue, 0);
    (0..count)
        .map(|_| {
            let (_, push) = client.next_push();
            (consumer_id, push.delivery_tag, body(&push))
        })
        .collect()
}

#[test]
fn confirmed_messages_survive_sigkill_and_acked_ones_do_not_come_back() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    assert_eq!(
        declare_queue(&mut client, "durable-jobs", true, &[]),
        ErrorCode::None
    );
    // 10,000 publishes pipelined; each answer is a confirm (durable before it is sent).
    for index in 0..10_000 {
        client.send(&publish_request(
            "",
            "durable-jobs",
            &format!("job-{index}"),
            true,
        ));
    }
    for _ in 0..10_000 {
        let (_, response) = client.receive();
        let Response::Publish(confirmed) = response else {
            panic!("wrong response")
        };
        assert_eq!(confirmed.error, ErrorCode::None);
    }
    broker.kill();
    broker.restart();

    let mut client = RawClient::connect(broker.addr());
    let delivered = drain(&mut client, "durable-jobs", 10_000);
    let bodies: BTreeSet<String> = delivered.iter().map(|(_, _, body)| body.clone()).collect();
    assert_eq!(
        bodies.len(),
        10_000,
        "every confirmed message comes back once"
    );
    // Ack the even ones, then crash again.
    let mut kept = BTreeSet::new();
    for (consumer_id, tag, body) in &delivered {
        let index: u32 = body["job-".len()..].parse().expect("number");
        if index.is_multiple_of(2) {
            client.send(&Request::Ack(AckRequest {
                queue: "durable-jobs".into(),
                consumer_id: *consumer_id,
                delivery_tag: *tag,
                multiple: false,
                negative: false,
                requeue: false,
            }));
        } else {
            kept.insert(body.clone());
        }
    }
    for _ in 0..5_000 {
        let (_, response) = client.receive();
        let Response::Ack(answer) = response else {
            panic!("wrong response")
        };
        assert_eq!(answer.error, ErrorCode::None);
    }
    broker.kill();
    broker.restart();
    let mut client = RawClient::connect(broker.addr());
    let again: BTreeSet<String> = drain(&mut client, "durable-jobs", 5_000)
        .into_iter()
        .map(|(_, _, body)| body)
        .collect();
    assert_eq!(again, kept, "only the unacknowledged half comes back");
}

fn queue_names(client: &mut RawClient) -> Vec<String> {
    let Response::ListQueues(listed) = client.call(&Request::ListQueues(ListQueuesRequest {}))
    else {
        panic!("wrong response")
    };
    listed.queues.into_iter().map(|queue| queue.name).collect()
}

#[test]
fn exclusive_queues_belong_to_their_connection_and_auto_delete_queues_go_with_their_last_consumer()
{
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut owner = RawClient::connect(broker.addr());
    let mut other = RawClient::connect(broker.addr());
    assert_eq!(
        declare_queue(&mut owner, "private", false, &[("exclusive", "true")]),
        ErrorCode::None
    );
    assert_eq!(
        declare_queue(
            &mut owner,
            "durable-private",
            true,
            &[("exclusive", "true")]
        ),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        declare_queue(&mut other, "private", false, &[("exclusive", "true")]),
        ErrorCode::PreconditionFailed
    );
    let Response::Subscribe(refused) = other.call(&Request::Subscribe(SubscribeRequest {
        queue: "private".into(),
        prefetch: 1,
    })) else {
        panic!("wrong response")
    };
    assert_eq!(refused.error, ErrorCode::PreconditionFailed);
    subscribe(&mut owner, "private", 1);
    // The owner's connection closes: its exclusive queue goes with it.
    drop(owner);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while queue_names(&mut other).contains(&"private".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "exclusive queue outlived its connection"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        declare_queue(&mut other, "private", false, &[]),
        ErrorCode::None,
        "the name is free again"
    );

    assert_eq!(
        declare_queue(&mut other, "temp", false, &[("auto-delete", "true")]),
        ErrorCode::None
    );
    let (_, consumer_id) = subscribe(&mut other, "temp", 1);
    assert!(queue_names(&mut other).contains(&"temp".to_string()));
    let cancel = Request::Cancel(CancelRequest {
        queue: "temp".into(),
        consumer_id,
    });
    assert_eq!(admin(&mut other, cancel), ErrorCode::None);
    assert!(
        !queue_names(&mut other).contains(&"temp".to_string()),
        "auto-delete queue outlived its last consumer"
    );
}

#[test]
fn dangerous_names_and_foreign_acks_are_refused() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    // A durable queue's name is a directory name.
    assert_eq!(
        declare_queue(&mut client, "..", true, &[]),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        declare_queue(&mut client, ".", true, &[]),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        declare_queue(&mut client, "work", true, &[]),
        ErrorCode::None
    );
    assert!(publish(&mut client, "", "work", "m", true).error.is_ok());
    let (_, consumer_id) = subscribe(&mut client, "work", 1);
    let (_, push) = client.next_push();
    // Another connection cannot settle (or cancel) this connection's deliveries.
    let mut stranger = RawClient::connect(broker.addr());
    assert_eq!(
        ack(
            &mut stranger,
            "work",
            consumer_id,
            push.delivery_tag,
            false,
            false
        ),
        ErrorCode::InvalidRequest
    );
    let cancel = Request::Cancel(CancelRequest {
        queue: "work".into(),
        consumer_id,
    });
    assert_eq!(admin(&mut stranger, cancel), ErrorCode::InvalidRequest);
    assert_eq!(
        ack(
            &mut client,
            "work",
            consumer_id,
            push.delivery_tag,
            false,
            false
        ),
        ErrorCode::None
    );
}

#[test]
fn pipelined_publishes_are_stored_and_delivered_in_the_order_sent() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    assert_eq!(
        declare_queue(&mut client, "ordered", true, &[]),
        ErrorCode::None
    );
    for index in 0..300 {
        client.send(&publish_request(
            "",
            "ordered",
            &format!("m{index:03}"),
            true,
        ));
    }
    for _ in 0..300 {
        let (_, response) = client.receive();
        let Response::Publish(confirmed) = response else {
            panic!("wrong response")
        };
        assert_eq!(confirmed.error, ErrorCode::None);
    }
    let bodies: Vec<String> = drain(&mut client, "ordered", 300)
        .into_iter()
        .map(|(_, _, body)| body)
        .collect();
    let expected: Vec<String> = (0..300).map(|index| format!("m{index:03}")).collect();
    assert_eq!(bodies, expected);
}

#[test]
fn messages_delivered_before_a_sigkill_come_back_redelivered() {
    // Goal: a message that may have been delivered before carries `redelivered`, restart
    // or not (issue #13: after a SIGKILL they came back with `redelivered: false`), and one
    // that was never delivered does not. Method: five durable messages, a consumer with
    // prefetch 3 that acks nothing, SIGKILL, restart, consume all five.
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    assert_eq!(
        declare_queue(&mut client, "marked", true, &[]),
        ErrorCode::None
    );
    for index in 0..5 {
        let confirmed = publish(&mut client, "", "marked", &format!("m-{index}"), true);
        assert_eq!(confirmed.error, ErrorCode::None);
    }
    subscribe(&mut client, "marked", 3);
    let delivered: BTreeSet<String> = (0..3)
        .map(|_| {
            let (_, push) = client.next_push();
            assert!(!push.redelivered, "a first delivery is not redelivered");
            body(&push)
        })
        .collect();
    broker.kill();
    broker.restart();
    let mut client = RawClient::connect(broker.addr());
    subscribe(&mut client, "marked", 5);
    for _ in 0..5 {
        let (_, push) = client.next_push();
        assert_eq!(
            push.redelivered,
            delivered.contains(&body(&push)),
            "{}: redelivered must say whether it was delivered before the crash",
            body(&push)
        );
    }
}

#[test]
fn a_publish_batch_confirms_each_message_as_its_own_publish_in_order() {
    // Goal: PublishBatch (issue #15) handles each message exactly as a Publish of its own:
    // per-message answers in request order (stored, unknown exchange, mandatory unroutable
    // refused, optional unroutable dropped, fanned out to two queues), and each queue gets
    // its messages in the order of the batch.
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut client = RawClient::connect(broker.addr());
    for queue in ["batch-a", "batch-b"] {
        assert_eq!(
            declare_queue(&mut client, queue, true, &[]),
            ErrorCode::None
        );
    }
    let declare = Request::DeclareExchange(DeclareExchangeRequest {
        name: "batch-fan".into(),
        kind: "fanout".into(),
        durable: true,
    });
    assert_eq!(admin(&mut client, declare), ErrorCode::None);
    for queue in ["batch-a", "batch-b"] {
        let bind = Request::BindQueue(BindQueueRequest {
            queue: queue.into(),
            exchange: "batch-fan".into(),
            routing_key: String::new(),
            headers: Vec::new(),
        });
        assert_eq!(admin(&mut client, bind), ErrorCode::None);
    }
    let message = |exchange: &str, routing_key: &str, body: &str, mandatory: bool| {
        let Request::Publish(request) = publish_request(exchange, routing_key, body, mandatory)
        else {
            unreachable!()
        };
        request
    };
    let mut messages = vec![
        message("", "batch-a", "a0", true),
        message("no-such-exchange", "batch-a", "lost", true),
        message("", "nowhere", "refused", true),
        message("", "nowhere", "dropped", false),
        message("batch-fan", "", "both", true),
    ];
    messages.extend((1..200).map(|index| message("", "batch-a", &format!("a{index}"), true)));
    let Response::PublishBatch(answer) =
        client.call(&Request::PublishBatch(PublishBatchRequest { messages }))
    else {
        panic!("wrong response")
    };
    assert_eq!(answer.error, ErrorCode::None);
    assert_eq!(answer.results.len(), 204);
    let outcome = |index: usize| {
        let result = &answer.results[index];
        (result.error, result.queues.clone())
    };
    assert_eq!(outcome(0), (ErrorCode::None, vec!["batch-a".to_string()]));
    assert_eq!(outcome(1).0, ErrorCode::UnknownExchange);
    assert_eq!(outcome(2), (ErrorCode::Unroutable, Vec::new()));
    assert_eq!(outcome(3), (ErrorCode::None, Vec::new()));
    assert_eq!(
        outcome(4),
        (
            ErrorCode::None,
            vec!["batch-a".to_string(), "batch-b".to_string()]
        )
    );
    assert!((5..204).all(|index| outcome(index) == outcome(0)));

    let bodies: Vec<String> = drain(&mut client, "batch-a", 201)
        .into_iter()
        .map(|(_, _, body)| body)
        .collect();
    let mut expected = vec!["a0".to_string(), "both".to_string()];
    expected.extend((1..200).map(|index| format!("a{index}")));
    assert_eq!(bodies, expected);
    let mut other = RawClient::connect(broker.addr());
    let only: Vec<String> = drain(&mut other, "batch-b", 1)
        .into_iter()
        .map(|(_, _, body)| body)
        .collect();
    assert_eq!(only, vec!["both".to_string()]);
}

#[test]
fn a_version_1_subscriber_gets_runs_as_deliver_batch_and_a_version_0_one_a_frame_each() {
    // Goal: issue #15's DeliverBatch. 300 messages published in one PublishBatch are stored
    // as one record batch; a consumer that subscribed at version 1 receives them as
    // DeliverBatch frames carrying several deliveries each, a version 0 consumer as one
    // Deliver frame per message, and both see the same bodies, routing keys, headers,
    // timestamps and increasing tags. After a requeue the redelivered flags travel in the
    // batch's marks.
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let mut publisher = RawClient::connect(broker.addr());
    for queue in ["runs-v0", "runs-v1"] {
        assert_eq!(
            declare_queue(&mut publisher, queue, true, &[]),
            ErrorCode::None
        );
    }
    let count = 300;
    for queue in ["runs-v0", "runs-v1"] {
        let messages = (0..count)
            .map(|index| PublishRequest {
                exchange: String::new(),
                routing_key: queue.to_string(),
                mandatory: true,
                headers: vec![HeaderEntry {
                    key: "n".into(),
                    value: Some(Bytes::from(format!("{index}"))),
                }],
                body: Bytes::from(format!("m{index}")),
            })
            .collect();
        let Response::PublishBatch(answer) =
            publisher.call(&Request::PublishBatch(PublishBatchRequest { messages }))
        else {
            panic!("wrong response")
        };
        assert!(answer
            .results
            .iter()
            .all(|result| result.error == ErrorCode::None));
    }
    let receive = |version: u16, queue: &str| {
        let mut client = RawClient::connect(broker.addr());
        client.send_at(
            &Request::Subscribe(SubscribeRequest {
                queue: queue.to_string(),
                prefetch: 1000,
            }),
            version,
        );
        let (_, response) = client.receive();
        let Response::Subscribe(answer) = response else {
            panic!("wrong response")
        };
        assert_eq!(answer.error, ErrorCode::None, "{:?}", answer.error_message);
        let pushes: Vec<DeliverPush> = (0..count).map(|_| client.next_push().1).collect();
        (client, answer.consumer_id, pushes)
    };
    let (old, _, per_message) = receive(0, "runs-v0");
    let (mut new, consumer, batched) = receive(1, "runs-v1");
    assert_eq!(old.deliver_frames, count);
    assert!(
        old.batch_frames.is_empty(),
        "a version 0 subscriber gets no DeliverBatch"
    );
    assert_eq!(
        new.deliver_frames, 0,
        "a version 1 subscriber gets no Deliver"
    );
    assert_eq!(new.batch_frames.iter().sum::<usize>(), count);
    assert!(
        new.batch_frames.len() < count / 10,
        "deliveries travel in runs: {:?}",
        new.batch_frames
    );
    let view = |push: &DeliverPush| {
        let header = push.headers.iter().find(|header| header.key == "n");
        (
            body(push),
            header.and_then(|header| header.value.clone()),
            push.redelivered,
        )
    };
    for (index, (old, new)) in per_message.iter().zip(&batched).enumerate() {
        assert_eq!(view(old), view(new), "message {index}");
        assert_eq!(body(new), format!("m{index}"));
        assert_eq!(new.routing_key, "runs-v1");
        assert_eq!(old.routing_key, "runs-v0");
        assert!(new.timestamp_ms > 0 && old.timestamp_ms > 0);
    }
    let tags: Vec<u64> = batched.iter().map(|push| push.delivery_tag).collect();
    assert!(
        tags.windows(2).all(|pair| pair[0] < pair[1]),
        "tags increase"
    );
    // Requeue two (one from each end): they come back marked redelivered.
    for tag in [tags[0], tags[count - 1]] {
        assert_eq!(
            ack(&mut new, "runs-v1", consumer, tag, true, true),
            ErrorCode::None
        );
    }
    let again: Vec<DeliverPush> = (0..2).map(|_| new.next_push().1).collect();
    assert!(again.iter().all(|push| push.redelivered));
    let mut bodies: Vec<String> = again.iter().map(body).collect();
    bodies.sort();
    assert_eq!(bodies, vec!["m0".to_string(), format!("m{}", count - 1)]);
}
