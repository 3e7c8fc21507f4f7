// amqplib (npm, RabbitMQ's Node.js client) against wharfd's AMQP listener (issue #16).
//
//     node amqplib_scenarios.js HOST PORT SCENARIO
//
// Each scenario asserts what RabbitMQ does (scripts/amqp-vs-rabbitmq.sh runs it against
// RabbitMQ itself) and prints "ok SCENARIO"; a failed assertion or client error exits
// non-zero with the error.
const assert = require("node:assert/strict");
const amqp = require("amqplib");

const [host, port, scenario] = process.argv.slice(2);
const url = `amqp://guest:guest@${host}:${port}/`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function getWithin(channel, queue, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const message = await channel.get(queue, { noAck: true });
    if (message) return message;
    await sleep(50);
  }
  return false;
}

// Confirms, properties and headers round-tripped, prefetch with manual acks, nack with
// requeue (redelivered), reject dead-lettered with x-death, a mandatory return, basic.get.
async function roundtrip() {
  const connection = await amqp.connect(url);
  const channel = await connection.createConfirmChannel();
  await channel.assertExchange("js-direct", "direct", { durable: true });
  await channel.assertExchange("js-dlx", "fanout");
  const dead = await channel.assertQueue("js-dead");
  await channel.bindQueue(dead.queue, "js-dlx", "");
  const work = await channel.assertQueue("js-work", {
    durable: true,
    deadLetterExchange: "js-dlx",
  });
  await channel.bindQueue(work.queue, "js-direct", "job");

  const returned = [];
  channel.on("return", (message) => returned.push(message.content.toString()));
  for (let index = 0; index < 4; index++) {
    channel.publish("js-direct", "job", Buffer.from(`job-${index}`), {
      persistent: true,
      contentType: "application/json",
      correlationId: `c${index}`,
      messageId: `m${index}`,
      headers: { index, tag: "js", nested: { deep: true } },
    });
  }
  channel.publish("js-direct", "nobody", Buffer.from("lost"), { mandatory: true });
  await channel.waitForConfirms();
  await sleep(100);
  assert.deepEqual(returned, ["lost"]);

  await channel.prefetch(2);
  const received = [];
  const { consumerTag } = await channel.consume(work.queue, (message) => received.push(message));
  await sleep(400);
  // The prefetch window holds two until they are settled.
  assert.equal(received.length, 2);
  const [first, second] = received;
  assert.equal(first.content.toString(), "job-0");
  assert.equal(first.properties.contentType, "application/json");
  assert.equal(first.properties.correlationId, "c0");
  assert.equal(first.properties.deliveryMode, 2);
  assert.deepEqual(first.properties.headers, { index: 0, tag: "js", nested: { deep: true } });
  assert.equal(first.fields.exchange, "js-direct");
  assert.equal(first.fields.routingKey, "job");
  assert.equal(first.fields.redelivered, false);
  channel.ack(first);
  channel.nack(second, false, true);
  await sleep(400);
  assert.equal(received.length, 4);
  // job-1 came back redelivered; the ack had made room for job-2 (either may come first).
  const later = received.slice(2);
  const body = (message) => message.content.toString();
  assert.deepEqual(later.map(body).sort(), ["job-1", "job-2"]);
  const again = later.find((message) => body(message) === "job-1");
  assert.equal(again.fields.redelivered, true);
  channel.reject(again, false);
  channel.ack(later.find((message) => body(message) === "job-2"));
  await sleep(300);
  assert.equal(received.length, 5);
  assert.equal(received[4].content.toString(), "job-3");
  channel.ack(received[4]);
  await channel.cancel(consumerTag);

  const died = await getWithin(channel, dead.queue, 5000);
  assert.ok(died, "the rejected message was not dead-lettered");
  assert.equal(died.content.toString(), "job-1");
  const [death] = died.properties.headers["x-death"];
  assert.equal(death.reason, "rejected");
  assert.equal(death.queue, "js-work");
  assert.equal(death.exchange, "js-direct");
  assert.deepEqual(death["routing-keys"], ["job"]);
  assert.equal(died.properties.headers["x-first-death-reason"], "rejected");

  assert.equal(await channel.get(work.queue), false);
  await connection.close();
  console.log("ok roundtrip");
}

// A 404 closes the channel with RabbitMQ's code and text; the connection and its other
// channels keep working.
async function channel_error() {
  const connection = await amqp.connect(url);
  const doomed = await connection.createChannel();
  const closed = new Promise((resolve) => doomed.on("error", resolve));
  await assert.rejects(doomed.checkQueue("js-no-such-queue"), /404/);
  const error = await closed;
  assert.equal(error.code, 404);
  assert.match(error.message, /NOT_FOUND - no queue 'js-no-such-queue' in vhost '\/'/);
  const channel = await connection.createChannel();
  const { queue } = await channel.assertQueue("", { exclusive: true });
  assert.match(queue, /^amq\.gen-/);
  channel.sendToQueue(queue, Buffer.from("still here"));
  const message = await getWithin(channel, queue, 5000);
  assert.equal(message.content.toString(), "still here");
  await connection.close();
  console.log("ok channel_error");
}

const scenarios = { roundtrip, channel_error };
scenarios[scenario]().catch((error) => {
  console.error(error);
  process.exit(1);
});
