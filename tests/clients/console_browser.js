// Drives the web console (issue #17) in headless Chromium (Debian's `chromium`, through
// playwright-core) against a live wharfd, and prints what the console showed as JSON; the
// Rust test (tests/tests/http_console.rs) checks it against what it sent.
//
//   node console_browser.js HTTP_ADDRESS SCREENSHOT_DIR
//
// Admin actions done through the UI: create topic `made-in-browser` (2 partitions) with the
// form, purge queue `jobs` with its button, declare queue `browser-queue`, declare fanout
// exchange `browser-fanout`, bind `jobs` to it and publish "from the browser" to it.
"use strict";

const { chromium } = require("playwright-core");
const fs = require("fs");
const path = require("path");
const os = require("os");

const [address, shots] = process.argv.slice(2);
const base = "http://" + address;
const chromiumPath = process.env.WHARF_TEST_CHROMIUM || "/usr/bin/chromium";

async function cells(page, selector) {
  return page.$$eval(selector + " td", (tds) => tds.map((td) => td.textContent));
}

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "wharf-console-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1280, height: 900 },
  });
  const out = { console_errors: [], failed_requests: [] };
  try {
    const page = await context.newPage();
    page.on("console", (message) => {
      if (message.type() === "error") out.console_errors.push(message.text());
    });
    page.on("requestfailed", (request) => {
      // The message browser closes its EventSource on purpose.
      if (!request.url().includes("/stream")) out.failed_requests.push(request.url());
    });
    page.on("dialog", (dialog) => dialog.accept());

    // Overview: the cards, and the charts after a few polls.
    await page.goto(base + "/#/overview");
    await page.waitForSelector("body[data-loaded]");
    await page.waitForFunction(() => document.getElementById("card-topics").textContent !== "-");
    out.title = await page.title();
    out.overview = {};
    for (const card of ["topics", "partitions", "groups", "queues", "records-in", "ready"]) {
      out.overview[card] = await page.textContent("#card-" + card);
    }
    // Traffic while the console polls: 20 POSTs of 10 records to `traffic`, over about 5 s,
    // so the throughput chart has points above zero.
    for (let i = 0; i < 20; i++) {
      const records = Array.from({ length: 10 }, (_, j) => ({ value: "t" + (i * 10 + j) }));
      const response = await fetch(base + "/api/v1/topics/traffic/partitions/0/records", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ records }),
      });
      if (response.status !== 201) throw new Error("traffic POST answered " + response.status);
      await page.waitForTimeout(250);
    }
    await page.waitForTimeout(2500);
    out.chart_max_records_per_s = await page.evaluate(
      () => Math.max(0, ...window.wharfConsole.history.map((point) => point.recordsIn)));
    out.chart_drawn = await page.$eval("#chart-records", (canvas) => {
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      let painted = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) painted++;
      return painted;
    });
    await page.screenshot({ path: path.join(shots, "console-overview.png"), fullPage: true });

    // Topics: the listing, then one topic's partitions and its messages.
    await page.goto(base + "/#/topics");
    await page.waitForSelector('#topics-table tr[data-topic="orders"]');
    out.topic_row = await cells(page, '#topics-table tr[data-topic="orders"]');
    await page.click('#topics-table tr[data-topic="orders"] a');
    await page.waitForSelector("#partitions-table tr[data-partition]");
    out.partitions = await page.$$eval("#partitions-table tr[data-partition]",
      (rows) => rows.map((row) => [...row.querySelectorAll("td")].map((td) => td.textContent)));
    await page.fill("#browse-partition", "0");
    await page.fill("#browse-from", "0");
    await page.fill("#browse-limit", "10");
    await page.click("#browse-submit");
    await page.waitForFunction(() => /records$/.test(document.getElementById("browse-message").textContent));
    out.messages = await page.$$eval("#messages-table tbody tr",
      (rows) => rows.map((row) => [...row.querySelectorAll("td")].map((td) => td.textContent)));
    await page.screenshot({ path: path.join(shots, "console-topic.png"), fullPage: true });

    // Groups: lag per partition.
    await page.goto(base + "/#/groups");
    await page.waitForSelector('#groups-table tr[data-group="billing"]');
    await page.click('#groups-table tr[data-group="billing"] a');
    await page.waitForSelector("#group-offsets tr[data-partition]");
    await page.screenshot({ path: path.join(shots, "console-group.png"), fullPage: true });
    out.group_offsets = await page.$$eval("#group-offsets tr[data-partition]",
      (rows) => rows.map((row) => [...row.querySelectorAll("td")].map((td) => td.textContent)));

    // Queues: counts, then a purge through the UI.
    await page.goto(base + "/#/queues");
    await page.waitForSelector('#queues-table tr[data-queue="jobs"]');
    out.queue_row = await cells(page, '#queues-table tr[data-queue="jobs"]');
    await page.screenshot({ path: path.join(shots, "console-queues.png"), fullPage: true });
    await page.click('#queues-table tr[data-queue="jobs"] button');
    await page.waitForFunction(() => {
      const row = document.querySelector('#queues-table tr[data-queue="jobs"]');
      return row && row.querySelectorAll("td")[2].textContent === "0";
    });
    out.queue_row_after_purge = await cells(page, '#queues-table tr[data-queue="jobs"]');
    await page.fill("#declare-queue-name", "browser-queue");
    await page.click("#declare-queue-submit");
    await page.waitForSelector('#queues-table tr[data-queue="browser-queue"]');
    out.declared_queue_message = await page.textContent("#declare-queue-message");

    // Exchanges: the listing, then declare, bind and publish through the forms.
    await page.goto(base + "/#/exchanges");
    await page.waitForSelector('#exchanges-table tr[data-exchange="events"]');
    out.exchange_row = await cells(page, '#exchanges-table tr[data-exchange="events"]');
    out.binding_row = await cells(page, '#bindings-table tr[data-binding="events jobs order.*"]');
    await page.fill("#declare-exchange-name", "browser-fanout");
    await page.selectOption("#declare-exchange-kind", "fanout");
    await page.click("#declare-exchange-submit");
    await page.waitForSelector('#exchanges-table tr[data-exchange="browser-fanout"]');
    await page.fill("#bind-exchange", "browser-fanout");
    await page.fill("#bind-queue", "jobs");
    await page.click("#bind-submit");
    await page.waitForSelector('#bindings-table tr[data-binding="browser-fanout jobs "]');
    await page.fill("#publish-exchange", "browser-fanout");
    await page.fill("#publish-body", "from the browser");
    await page.click("#publish-submit");
    await page.waitForFunction(() => /^routed/.test(document.getElementById("publish-message").textContent));
    out.publish_message = await page.textContent("#publish-message");
    await page.screenshot({ path: path.join(shots, "console-exchanges.png"), fullPage: true });

    // Admin action: create a topic with the form.
    await page.goto(base + "/#/topics");
    await page.waitForSelector("#create-topic-name");
    await page.fill("#create-topic-name", "made-in-browser");
    await page.fill("#create-topic-partitions", "2");
    await page.click("#create-topic-submit");
    await page.waitForSelector('#topics-table tr[data-topic="made-in-browser"]');
    out.created_message = await page.textContent("#create-topic-message");
    out.created_row = await cells(page, '#topics-table tr[data-topic="made-in-browser"]');
    // A refused create shows the broker's message.
    await page.fill("#create-topic-name", "made-in-browser");
    await page.click("#create-topic-submit");
    await page.waitForSelector("#create-topic-message.error");
    out.refused_message = await page.textContent("#create-topic-message");
    await page.screenshot({ path: path.join(shots, "console-topics.png"), fullPage: true });
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
