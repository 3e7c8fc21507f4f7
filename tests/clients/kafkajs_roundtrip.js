// Drives wharfd's Kafka listener with kafkajs (npm).
//
//     node kafkajs_roundtrip.js BOOTSTRAP COUNT
//
// Creates a topic with 3 partitions, produces COUNT keyed records (gzip, idempotent),
// consumes them in a consumer group of two members (kafkajs' own client-side assignor,
// the classic group protocol), commits, and runs a transaction that is aborted and one that
// is committed. Prints one JSON document.
const { Kafka, CompressionTypes, logLevel } = require("kafkajs");

const [bootstrap, countText] = process.argv.slice(2);
const count = Number(countText);
const kafka = new Kafka({ clientId: "wharf-test", brokers: [bootstrap], logLevel: logLevel.ERROR });

async function main() {
  const out = {};
  const admin = kafka.admin();
  await admin.connect();
  out.created = await admin.createTopics({
    topics: [{ topic: "js-orders", numPartitions: 3 }, { topic: "js-tx", numPartitions: 1 }],
    waitForLeaders: true,
  });
  const metadata = await admin.fetchTopicMetadata({ topics: ["js-orders"] });
  out.partitions = metadata.topics[0].partitions.length;

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) {
    messages.push({ key: `k${i % 5}`, value: `v${i}` });
  }
  const acked = await producer.send({
    topic: "js-orders",
    acks: -1,
    compression: CompressionTypes.GZIP,
    messages,
  });
  out.acked_partitions = acked.length;

  const seen = [];
  const members = [];
  for (const name of ["a", "b"]) {
    const consumer = kafka.consumer({ groupId: "js-group", sessionTimeout: 10000, heartbeatInterval: 500 });
    await consumer.connect();
    await consumer.subscribe({ topic: "js-orders", fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        seen.push([name, partition, Number(message.offset), message.key.toString(), message.value.toString()]);
      },
    });
    members.push(consumer);
  }
  const deadline = Date.now() + 60000;
  while (new Set(seen.map((row) => row[4])).size < count && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  for (const consumer of members) {
    await consumer.disconnect();
  }
  out.seen = seen;
  const offsets = await admin.fetchOffsets({ groupId: "js-group", topics: ["js-orders"] });
  out.committed = offsets[0].partitions.map((p) => [p.partition, Number(p.offset)]).sort((x, y) => x[0] - y[0]);
  const ends = await admin.fetchTopicOffsets("js-orders");
  out.ends = ends.map((p) => [p.partition, Number(p.high)]).sort((x, y) => x[0] - y[0]);

  const txProducer = kafka.producer({ transactionalId: "js-tx-app", idempotent: true, maxInFlightRequests: 1 });
  await txProducer.connect();
  const aborted = await txProducer.transaction();
  await aborted.send({ topic: "js-tx", messages: [{ value: "aborted" }] });
  await aborted.abort();
  const committed = await txProducer.transaction();
  await committed.send({ topic: "js-tx", messages: [{ value: "committed" }] });
  await committed.commit();
  await txProducer.disconnect();

  const reader = kafka.consumer({ groupId: "js-tx-reader", readUncommitted: false });
  await reader.connect();
  await reader.subscribe({ topic: "js-tx", fromBeginning: true });
  const txValues = [];
  await reader.run({ eachMessage: async ({ message }) => { txValues.push(message.value.toString()); } });
  const txDeadline = Date.now() + 20000;
  while (txValues.length < 1 && Date.now() < txDeadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await new Promise((resolve) => setTimeout(resolve, 1000));
  await reader.disconnect();
  out.tx_values = txValues;

  await producer.disconnect();
  await admin.disconnect();
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
