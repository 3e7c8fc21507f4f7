//! The client library's `Publisher` against the real `wharfd` (issue #15): started
//! publishes travel many to a PublishBatch request, yet each keeps its own confirm and its
//! own error, and a queue stores them in the order they were started.

use std::time::Duration;

use bytes::Bytes;
use integration_tests::BrokerProcess;
use wharf_client::{
    Admin, Client, ClientConfig, Durability, Error, Publisher, QueueArgs, Routing, Subscriber,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_publishes_share_requests_but_keep_their_own_confirms_and_order() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    let client = Client::connect(ClientConfig::new(broker.address()))
        .await
        .expect("connect");
    Admin::new(&client)
        .declare_queue("batched", Durability::Durable, &QueueArgs::default())
        .await
        .expect("declare");
    for linger in [Duration::ZERO, Duration::from_millis(5)] {
        let publisher = Publisher::with_linger(&client, linger);
        // 2,500 messages: more than one full batch (1,000), with a mandatory message to
        // nowhere in the middle of one.
        let mut confirms = Vec::new();
        for index in 0..2_500u32 {
            let (key, routing) = if index == 1_234 {
                ("nowhere", Routing::Mandatory)
            } else {
                ("batched", Routing::Mandatory)
            };
            let body = Bytes::from(format!("m{index:04}"));
            let confirm = publisher
                .start("", key, body, Vec::new(), routing)
                .await
                .expect("start");
            confirms.push(confirm);
        }
        for (index, confirm) in confirms.into_iter().enumerate() {
            match (index, confirm.await) {
                (1_234, Err(Error::Unroutable { .. })) => {}
                (1_234, other) => panic!("the unroutable message got {other:?}"),
                (_, Ok(queues)) => assert_eq!(queues, vec!["batched".to_string()]),
                (index, Err(error)) => panic!("message {index} failed: {error}"),
            }
        }
        let mut subscriber = Subscriber::subscribe(&client, "batched", 500)
            .await
            .expect("subscribe");
        for index in (0..2_500u32).filter(|index| *index != 1_234) {
            let delivery = tokio::time::timeout(Duration::from_secs(30), subscriber.next())
                .await
                .expect("a delivery in time")
                .expect("next")
                .expect("a delivery");
            assert_eq!(
                delivery.body,
                Bytes::from(format!("m{index:04}")),
                "{linger:?}"
            );
            if index % 100 == 99 {
                delivery.ack_multiple().await.expect("ack");
            }
        }
        subscriber.cancel().await.expect("cancel");
    }
}
