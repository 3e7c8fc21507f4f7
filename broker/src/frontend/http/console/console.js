// The Wharf web console (issue #17): plain JavaScript on the broker's own HTTP API and
// /metrics, no framework and nothing fetched from the internet. Every value shown is set
// with textContent, so names and message bodies are never parsed as HTML.
"use strict";

const POLL_MS = 2000;
const HISTORY = 90; // points kept per chart: three minutes at one poll every 2 s

const state = { route: [], history: [], previous: null, queueRates: {} };
// For the browser test and the curious: the polled history the charts draw.
window.wharfConsole = state;

function $(id) { return document.getElementById(id); }

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error(data && data.message ? data.message : response.status + " " + response.statusText);
    error.kind = data && data.error;
    throw error;
  }
  return data;
}

// Another node of the cluster coordinates the groups (503 not_coordinator, naming it);
// any other error fails the page as usual.
function notCoordinator(error) {
  if (error.kind === "not_coordinator") return { error };
  throw error;
}

// Parses the Prometheus text format into [{name, labels, value}].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    if (match[3]) {
      for (const pair of match[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[pair[1]] = pair[2].replace(/\\"/g, '"').replace(/\\n/g, "\n").replace(/\\\\/g, "\\");
      }
    }
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

function sum(samples, name, filter) {
  let total = 0;
  for (const sample of samples) {
    if (sample.name === name && (!filter || filter(sample.labels))) total += sample.value;
  }
  return total;
}

function cell(row, text, numeric) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (numeric) td.className = "num";
  row.appendChild(td);
  return td;
}

function link(row, text, href) {
  const td = document.createElement("td");
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  td.appendChild(a);
  row.appendChild(td);
  return td;
}

function button(row, text, onClick, className) {
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.textContent = text;
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  td.appendChild(b);
  row.appendChild(td);
  return b;
}

function tbody(id) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  return body;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function say(id, text, isError) {
  const element = $(id);
  element.textContent = text;
  element.className = isError ? "message error" : "message";
}

// A line chart of series [{label, color, values}] on a canvas, scaled to the largest value.
function lineChart(canvas, series) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const left = 48, bottom = 18, top = 8;
  context.clearRect(0, 0, width, height);
  let max = 0;
  for (const s of series) for (const v of s.values) max = Math.max(max, v);
  max = max > 0 ? max * 1.1 : 1;
  context.strokeStyle = "#d5dbe1";
  context.fillStyle = "#5b6877";
  context.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 2; i++) {
    const y = top + (height - top - bottom) * (1 - i / 2);
    context.beginPath(); context.moveTo(left, y); context.lineTo(width, y); context.stroke();
    const value = max * i / 2;
    context.fillText(value >= 100 ? value.toFixed(0) : value.toPrecision(2), 2, y + 4);
  }
  const step = (width - left) / (HISTORY - 1);
  let legend = left;
  for (const s of series) {
    context.strokeStyle = s.color;
    context.lineWidth = 2;
    context.beginPath();
    s.values.forEach((v, i) => {
      const x = left + step * (HISTORY - s.values.length + i);
      const y = top + (height - top - bottom) * (1 - v / max);
      if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
    });
    context.stroke();
    context.lineWidth = 1;
    context.fillStyle = s.color;
    context.fillText(s.label, legend, height - 4);
    legend += context.measureText(s.label).width + 16;
  }
}

// A bar chart of [{label, value}].
function barChart(canvas, bars) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  if (bars.length === 0) return;
  const max = Math.max(1, ...bars.map((b) => b.value));
  const slot = Math.min(90, width / bars.length);
  context.font = "11px system-ui, sans-serif";
  bars.forEach((b, i) => {
    const h = (height - 30) * b.value / max;
    context.fillStyle = "#3e7cb1";
    context.fillRect(i * slot + 4, height - 18 - h, Math.max(2, slot - 8), h);
    context.fillStyle = "#1d2530";
    context.fillText(String(b.value), i * slot + 4, height - 22 - h);
    context.fillText(b.label, i * slot + 4, height - 4);
  });
}

// One poll of /metrics: the history the overview charts draw, and the queues' rates.
async function pollMetrics() {
  const response = await fetch("/metrics");
  if (!response.ok) throw new Error("/metrics answered " + response.status);
  const samples = parseMetrics(await response.text());
  const now = Date.now();
  const point = {
    time: now,
    recordsIn: sum(samples, "wharf_partition_records_in_total"),
    bytesIn: sum(samples, "wharf_partition_bytes_in_total"),
    bytesOut: sum(samples, "wharf_partition_bytes_out_total"),
    appendSum: sum(samples, "wharf_storage_append_duration_seconds_sum"),
    appendCount: sum(samples, "wharf_storage_append_duration_seconds_count"),
    fsyncSum: sum(samples, "wharf_storage_fsync_duration_seconds_sum"),
    fsyncCount: sum(samples, "wharf_storage_fsync_duration_seconds_count"),
    published: sum(samples, "wharf_queue_messages_published_total"),
    delivered: sum(samples, "wharf_queue_messages_delivered_total"),
    ready: sum(samples, "wharf_queue_messages_ready"),
    queues: {},
  };
  for (const sample of samples) {
    const queue = sample.labels.queue;
    if (queue === undefined) continue;
    point.queues[queue] = point.queues[queue] || { published: 0, delivered: 0 };
    if (sample.name === "wharf_queue_messages_published_total") point.queues[queue].published = sample.value;
    if (sample.name === "wharf_queue_messages_delivered_total") point.queues[queue].delivered = sample.value;
  }
  const previous = state.previous;
  if (previous) {
    const seconds = Math.max(0.001, (now - previous.time) / 1000);
    const rate = (key) => Math.max(0, (point[key] - previous[key]) / seconds);
    const mean = (sumKey, countKey) => {
      const count = point[countKey] - previous[countKey];
      return count > 0 ? 1000 * (point[sumKey] - previous[sumKey]) / count : 0;
    };
    state.history.push({
      recordsIn: rate("recordsIn"),
      bytesIn: rate("bytesIn"),
      bytesOut: rate("bytesOut"),
      appendMs: mean("appendSum", "appendCount"),
      fsyncMs: mean("fsyncSum", "fsyncCount"),
      published: rate("published"),
      delivered: rate("delivered"),
    });
    if (state.history.length > HISTORY) state.history.shift();
    for (const [queue, counts] of Object.entries(point.queues)) {
      const before = previous.queues[queue];
      if (!before) continue;
      state.queueRates[queue] = {
        published: Math.max(0, (counts.published - before.published) / seconds),
        delivered: Math.max(0, (counts.delivered - before.delivered) / seconds),
      };
    }
  }
  state.previous = point;
  return { samples, point };
}

async function showOverview(metrics) {
  // In a cluster only the coordinating node lists groups (another answers 503
  // not_coordinator naming it): the card then says so rather than failing the page.
  const [topics, groups, queues] = await Promise.all([
    api("GET", "/api/v1/topics"),
    api("GET", "/api/v1/groups").catch(notCoordinator),
    api("GET", "/api/v1/queues"),
  ]);
  $("card-topics").textContent = topics.topics.length;
  $("card-partitions").textContent = topics.topics.reduce((n, t) => n + t.partitions, 0);
  $("card-groups").textContent = groups.error ? "–" : groups.groups.length;
  $("card-groups").title = groups.error ? groups.error.message : "";
  $("card-queues").textContent = queues.queues.length;
  $("card-records-in").textContent = metrics.point.recordsIn;
  $("card-ready").textContent = queues.queues.reduce((n, q) => n + q.ready, 0);
  const h = state.history;
  lineChart($("chart-records"), [{ label: "records in", color: "#3e7cb1", values: h.map((p) => p.recordsIn) }]);
  lineChart($("chart-bytes"), [
    { label: "in", color: "#3e7cb1", values: h.map((p) => p.bytesIn) },
    { label: "out", color: "#d1792b", values: h.map((p) => p.bytesOut) },
  ]);
  lineChart($("chart-latency"), [
    { label: "append", color: "#3e7cb1", values: h.map((p) => p.appendMs) },
    { label: "fsync", color: "#b13e5f", values: h.map((p) => p.fsyncMs) },
  ]);
  lineChart($("chart-queues"), [
    { label: "published", color: "#3e7cb1", values: h.map((p) => p.published) },
    { label: "delivered", color: "#2b9d5b", values: h.map((p) => p.delivered) },
  ]);
}

async function showTopics(metrics) {
  const topics = await api("GET", "/api/v1/topics");
  const body = tbody("topics-table");
  for (const topic of topics.topics) {
    const row = document.createElement("tr");
    row.dataset.topic = topic.name;
    link(row, topic.name, "#/topics/" + encodeURIComponent(topic.name));
    cell(row, topic.partitions, true);
    const mine = (labels) => labels.topic === topic.name;
    const records = sum(metrics.samples, "wharf_partition_high_watermark", mine)
      - sum(metrics.samples, "wharf_partition_log_start_offset", mine);
    cell(row, records, true);
    cell(row, bytes(sum(metrics.samples, "wharf_partition_size_bytes", mine)), true);
    button(row, "Delete", () => deleteTopic(topic.name), "danger");
    body.appendChild(row);
  }
}

async function showTopic(name) {
  const topic = await api("GET", "/api/v1/topics/" + encodeURIComponent(name));
  $("topic-name").textContent = topic.name;
  const partitions = tbody("partitions-table");
  for (const p of topic.partitions) {
    const row = document.createElement("tr");
    row.dataset.partition = p.partition;
    cell(row, p.partition, true);
    cell(row, p.status);
    cell(row, p.log_start_offset, true);
    cell(row, p.high_watermark, true);
    cell(row, p.high_watermark - p.log_start_offset, true);
    partitions.appendChild(row);
  }
  const configs = tbody("configs-table");
  for (const c of topic.configs) {
    const row = document.createElement("tr");
    cell(row, c.name); cell(row, c.value); cell(row, c.source);
    configs.appendChild(row);
  }
}

// The message browser: reads up to `limit` records from the SSE stream of a partition,
// then closes it (or after 2 s without new records).
function browse(topic, partition, from, limit) {
  const body = tbody("messages-table");
  say("browse-message", "reading...");
  const url = "/api/v1/topics/" + encodeURIComponent(topic) + "/partitions/" + partition + "/stream?from=" + from;
  const source = new EventSource(url);
  let count = 0;
  let idle;
  const finish = (text, isError) => {
    source.close();
    clearTimeout(idle);
    say("browse-message", text, isError);
  };
  const arm = () => {
    clearTimeout(idle);
    idle = setTimeout(() => finish(count + " records"), 2000);
  };
  arm();
  source.addEventListener("record", (event) => {
    const record = JSON.parse(event.data);
    const row = document.createElement("tr");
    cell(row, record.offset, true);
    cell(row, new Date(record.timestamp_ms).toISOString());
    cell(row, record.key !== undefined ? record.key : "base64:" + record.key_base64);
    cell(row, record.value !== undefined ? record.value : "base64:" + record.value_base64);
    cell(row, record.headers.map((h) => h.key + "=" + (h.value !== undefined ? h.value : h.value_base64)).join(", "));
    body.appendChild(row);
    count++;
    if (count >= limit) finish(count + " records"); else arm();
  });
  source.addEventListener("error", (event) => {
    if (event.data) finish(JSON.parse(event.data).message, true);
    else if (source.readyState === EventSource.CLOSED) finish("the stream could not be opened", true);
  });
}

async function deleteTopic(name) {
  if (!window.confirm("Delete topic " + name + " and all its records?")) return;
  try {
    await api("DELETE", "/api/v1/topics/" + encodeURIComponent(name));
    location.hash = "#/topics";
    await refresh();
  } catch (error) {
    window.alert(error.message);
  }
}

async function showGroups() {
  const groups = await api("GET", "/api/v1/groups").catch(notCoordinator);
  if (groups.error) {
    const row = document.createElement("tr");
    cell(row, groups.error.message).colSpan = 3;
    tbody("groups-table").appendChild(row);
    return;
  }
  const body = tbody("groups-table");
  for (const group of groups.groups) {
    const row = document.createElement("tr");
    row.dataset.group = group.group_id;
    link(row, group.group_id, "#/groups/" + encodeURIComponent(group.group_id));
    cell(row, group.state);
    cell(row, group.members, true);
    body.appendChild(row);
  }
}

async function showGroup(name) {
  const group = await api("GET", "/api/v1/groups/" + encodeURIComponent(name));
  $("group-name").textContent = group.group_id;
  $("group-summary").textContent = "State " + group.state + ", generation " + group.generation
    + (group.assignor ? ", assignor " + group.assignor : "");
  const members = tbody("group-members");
  for (const m of group.members) {
    const row = document.createElement("tr");
    cell(row, m.member_id); cell(row, m.client_id); cell(row, (m.topics || []).join(", "));
    members.appendChild(row);
  }
  const offsets = tbody("group-offsets");
  for (const o of group.offsets) {
    const row = document.createElement("tr");
    row.dataset.partition = o.topic + "/" + o.partition;
    cell(row, o.topic); cell(row, o.partition, true); cell(row, o.committed_offset, true);
    cell(row, o.high_watermark, true); cell(row, o.lag, true);
    offsets.appendChild(row);
  }
  barChart($("chart-lag"), group.offsets.map((o) => ({ label: o.topic + "/" + o.partition, value: o.lag })));
}

async function showQueues() {
  const queues = await api("GET", "/api/v1/queues");
  const body = tbody("queues-table");
  for (const q of queues.queues) {
    const row = document.createElement("tr");
    row.dataset.queue = q.name;
    cell(row, q.name);
    cell(row, q.durability);
    cell(row, q.ready, true);
    cell(row, q.unacked, true);
    cell(row, q.delayed, true);
    cell(row, q.consumers, true);
    const rates = state.queueRates[q.name] || { published: 0, delivered: 0 };
    cell(row, rates.published.toFixed(1), true);
    cell(row, rates.delivered.toFixed(1), true);
    button(row, "Purge", async () => {
      if (!window.confirm("Remove every ready message of " + q.name + "?")) return;
      try {
        await api("POST", "/api/v1/queues/" + encodeURIComponent(q.name) + "/purge");
        await refresh();
      } catch (error) {
        window.alert(error.message);
      }
    });
    body.appendChild(row);
  }
}

async function showExchanges() {
  const [exchanges, bindings] = await Promise.all([
    api("GET", "/api/v1/exchanges"), api("GET", "/api/v1/bindings"),
  ]);
  const body = tbody("exchanges-table");
  for (const e of exchanges.exchanges) {
    const row = document.createElement("tr");
    row.dataset.exchange = e.name;
    cell(row, e.name === "" ? "(default)" : e.name);
    cell(row, e.kind);
    cell(row, e.durability);
    cell(row, e.bindings, true);
    if (e.name === "" || e.name.startsWith("amq.")) cell(row, "");
    else button(row, "Delete", () => act(() => api("DELETE", "/api/v1/exchanges/" + encodeURIComponent(e.name)),
      "Delete exchange " + e.name + " and its bindings?"), "danger");
    body.appendChild(row);
  }
  const rows = tbody("bindings-table");
  for (const b of bindings.bindings) {
    const row = document.createElement("tr");
    row.dataset.binding = b.exchange + " " + b.queue + " " + b.routing_key;
    cell(row, b.exchange === "" ? "(default)" : b.exchange);
    cell(row, b.queue);
    cell(row, b.routing_key);
    cell(row, Object.entries(b.arguments).map(([k, v]) => k + "=" + v).join(", "));
    if (b.exchange === "") cell(row, "");
    else button(row, "Unbind", () => act(() => api("POST", "/api/v1/bindings/delete", b)));
    rows.appendChild(row);
  }
}

// Runs an admin action (after a confirmation when `question` is given), then refreshes.
async function act(action, question) {
  if (question && !window.confirm(question)) return;
  try {
    await action();
    await refresh();
  } catch (error) {
    window.alert(error.message);
  }
}

// Wires a form: `submit` returns the sentence shown when it worked.
function form(id, messageId, submit) {
  $(id).addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      say(messageId, await submit());
      await refresh();
    } catch (error) {
      say(messageId, error.message, true);
    }
  });
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  return parts[0] ? parts : ["overview"];
}

function showPage(id) {
  for (const page of document.querySelectorAll(".page")) page.hidden = page.id !== id;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.id === "nav-" + state.route[0]);
  }
}

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const metrics = await pollMetrics();
    const [page, name] = state.route;
    if (page === "topics" && name !== undefined) { showPage("page-topic"); await showTopic(name); }
    else if (page === "topics") { showPage("page-topics"); await showTopics(metrics); }
    else if (page === "groups" && name !== undefined) { showPage("page-group"); await showGroup(name); }
    else if (page === "groups") { showPage("page-groups"); await showGroups(); }
    else if (page === "queues") { showPage("page-queues"); await showQueues(); }
    else if (page === "exchanges") { showPage("page-exchanges"); await showExchanges(); }
    else { showPage("page-overview"); await showOverview(metrics); }
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    $("status").className = "status";
    document.body.dataset.loaded = String(Date.now());
  } catch (error) {
    $("status").textContent = error.message;
    $("status").className = "status down";
  } finally {
    refreshing = false;
  }
}

$("create-topic").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("create-topic-name").value.trim();
  const partitions = Number($("create-topic-partitions").value);
  try {
    await api("POST", "/api/v1/topics", { name, partitions });
    say("create-topic-message", "created " + name);
    $("create-topic-name").value = "";
    await refresh();
  } catch (error) {
    say("create-topic-message", error.message, true);
  }
});

form("declare-queue", "declare-queue-message", async () => {
  const name = $("declare-queue-name").value.trim();
  await api("PUT", "/api/v1/queues/" + encodeURIComponent(name), { durable: $("declare-queue-durable").checked });
  return "declared " + name;
});

form("declare-exchange", "declare-exchange-message", async () => {
  const name = $("declare-exchange-name").value.trim();
  await api("PUT", "/api/v1/exchanges/" + encodeURIComponent(name), { kind: $("declare-exchange-kind").value });
  return "declared " + name;
});

form("bind", "bind-message", async () => {
  const binding = {
    exchange: $("bind-exchange").value.trim(),
    queue: $("bind-queue").value.trim(),
    routing_key: $("bind-routing-key").value,
  };
  await api("POST", "/api/v1/bindings", binding);
  return "bound " + binding.queue + " to " + binding.exchange;
});

form("publish", "publish-message", async () => {
  const answer = await api("POST", "/api/v1/publish", {
    exchange: $("publish-exchange").value.trim(),
    routing_key: $("publish-routing-key").value,
    body: $("publish-body").value,
  });
  return answer.outcome + (answer.queues.length ? " to " + answer.queues.join(", ") : "");
});

$("browse").addEventListener("submit", (event) => {
  event.preventDefault();
  browse(state.route[1], Number($("browse-partition").value), Number($("browse-from").value),
    Number($("browse-limit").value));
});

$("delete-topic").addEventListener("click", () => deleteTopic(state.route[1]));

window.addEventListener("hashchange", () => { state.route = route(); refresh(); });
state.route = route();
refresh();
setInterval(refresh, POLL_MS);
