// The Outrigger web console: a page of the sidecar that reads and changes
// its state through its own HTTP API (under ./api/), with the API token
// when one is set. No build step, no third-party code.
"use strict";

const $ = (id) => document.getElementById(id);
const api = (path) => "api/" + path;
const enc = encodeURIComponent;
const TOKEN_KEY = "outrigger-token";

/// fetch() with the token; a 401 asks for it and rejects.
async function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("authorization", "Bearer " + token);
  const resp = await fetch(api(path), { ...options, headers });
  if (resp.status === 401) {
    askForToken(token ? "That token was refused." : "");
    throw new Error("unauthenticated");
  }
  return resp;
}

/// The JSON answer, or an error naming the sidecar's message.
async function json(path, options) {
  const resp = await call(path, options);
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
  return body;
}

function showError(err) {
  if (err && err.message === "unauthenticated") return;
  $("error").textContent = String(err && err.message ? err.message : err);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function askForToken(why) {
  $("login").hidden = false;
  document.querySelector("main").hidden = true;
  $("login-error").textContent = why;
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("login").hidden = true;
  document.querySelector("main").hidden = false;
  $("logout").hidden = false;
  show();
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

function millis(ms) {
  if (ms == null) return "never expires";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  if (ms < 3600000) return Math.floor(ms / 60000) + " m " + Math.floor((ms % 60000) / 1000) + " s";
  return Math.floor(ms / 3600000) + " h " + Math.floor((ms % 3600000) / 60000) + " m";
}

function time(unixMs) {
  return new Date(unixMs).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/// Fills tbody `id` with one row per item; `cells` gives a row's texts.
function rows(id, items, cells, empty) {
  const body = $(id);
  body.replaceChildren();
  if (items.length === 0) {
    const tr = body.insertRow();
    const td = tr.insertCell();
    td.colSpan = 8;
    td.textContent = empty;
    td.className = "note";
    return [];
  }
  return items.map((item) => {
    const tr = body.insertRow();
    for (const text of cells(item)) tr.insertCell().textContent = text;
    return tr;
  });
}

// ---- Overview -----------------------------------------------------------

const timeline = [];

function noteMode(mode, sinceMs) {
  const last = timeline[timeline.length - 1];
  if (last && last.mode === mode) return;
  timeline.push({ mode, at: sinceMs || Date.now() });
  $("timeline").replaceChildren(
    ...timeline.map((t) => {
      const li = document.createElement("li");
      li.textContent = time(t.at) + "  " + t.mode;
      return li;
    }),
  );
}

function renderStatus(st) {
  const f = st.failover;
  const backend = $("backend");
  backend.textContent = st.backend;
  backend.className = "badge " + st.backend;
  $("sidecar").textContent = st.version + " · " + st.namespace;
  const facts = [
    ["backend", st.backend + (f ? "" : " (no Redis configured)")],
    ["namespace", st.namespace],
    ["up", millis(st.uptime_ms)],
  ];
  if (f) {
    facts.push(["since", time(f.since_unix_ms)]);
    facts.push(["transitions", String(f.transitions)]);
    facts.push(["last error", f.last_error || "none"]);
    facts.push(["maxmemory-policy", (f.maxmemory_policy || "unknown") + (f.evicts ? " (evicts keys!)" : "")]);
    const r = f.last_reconciliation;
    if (r) {
      facts.push([
        "last reconciliation",
        `${time(r.at_unix_ms)}: ${r.cache_entries_dropped} cache entries dropped, ${r.locks_released} locks released, ` +
          `${r.members_reasserted} members reasserted, ${r.messages_flushed} messages flushed`,
      ]);
    }
    noteMode(f.mode, f.since_unix_ms);
  } else {
    noteMode("memory", Date.now() - st.uptime_ms);
  }
  const c = st.cache;
  facts.push(["cache", `${c.hits} hits, ${c.misses} misses` + (f ? "" : `, ${c.keys} keys`)]);
  if (c.near) facts.push(["near cache", `${c.near.live ? "serving" : "not serving"}: ${c.near.entries} entries, ${c.near.hits} hits`]);
  rows("status", facts, (x) => x, "");
  rows(
    "plugins",
    st.plugins,
    (p) => [p.name, p.healthy ? "yes" : "no", p.world || "-", p.hooks.join(", "), p.fail, String(p.generation),
      [p.reason, p.reload_error].filter(Boolean).join("; ") || "-"],
    "no plugins configured",
  );
}

/// Request counts and latency buckets per primitive and operation, from
/// the sidecar's own /metrics.
function parseMetrics(text) {
  const out = new Map();
  const entry = (p, o) => {
    const k = p + " " + o;
    if (!out.has(k)) out.set(k, { primitive: p, op: o, total: 0, failing: 0, buckets: new Map() });
    return out.get(k);
  };
  for (const line of text.split("\n")) {
    let m = line.match(/^outrigger_requests_total\{(.*)\} (\S+)/);
    if (m) {
      const l = labels(m[1]);
      const e = entry(l.primitive, l.op);
      const n = Number(m[2]);
      e.total += n;
      if (/^(unavailable|internal|out_of_memory|plugin_error|exhausted)$/.test(l.outcome)) e.failing += n;
      continue;
    }
    m = line.match(/^outrigger_request_duration_seconds_bucket\{(.*)\} (\S+)/);
    if (m) {
      const l = labels(m[1]);
      const b = entry(l.primitive, l.op).buckets;
      b.set(l.le, (b.get(l.le) || 0) + Number(m[2]));
    }
  }
  return out;
}

function labels(text) {
  const l = {};
  for (const m of text.matchAll(/(\w+)="([^"]*)"/g)) l[m[1]] = m[2];
  return l;
}

/// The bucket bound under which a share `q` of the interval's requests fell.
function quantile(now, before, q) {
  const bounds = [...now.keys()].sort((a, b) => Number(a) - Number(b));
  const counts = bounds.map((le) => now.get(le) - ((before && before.get(le)) || 0));
  const total = counts[counts.length - 1];
  if (!total) return "-";
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= q * total) {
      const s = Number(bounds[i]);
      return s === Infinity || bounds[i] === "+Inf" ? "> 1.6 s" : "≤ " + (s < 0.001 ? (s * 1e6).toFixed(0) + " µs" : (s * 1000).toFixed(1) + " ms");
    }
  }
  return "-";
}

let previous = null;

async function refreshRates() {
  const text = await (await call("metrics")).text();
  const now = { at: Date.now(), ops: parseMetrics(text) };
  if (previous) {
    const seconds = (now.at - previous.at) / 1000;
    const active = [...now.ops.values()]
      .map((e) => ({ e, was: previous.ops.get(e.primitive + " " + e.op) }))
      .filter(({ e, was }) => e.total - (was ? was.total : 0) > 0);
    rows(
      "rates",
      active,
      ({ e, was }) => [
        e.primitive,
        e.op,
        ((e.total - (was ? was.total : 0)) / seconds).toFixed(1),
        ((e.failing - (was ? was.failing : 0)) / seconds).toFixed(1),
        quantile(e.buckets, was && was.buckets, 0.5),
        quantile(e.buckets, was && was.buckets, 0.99),
      ],
      "no requests in the last interval",
    );
  }
  previous = now;
}

async function overview() {
  renderStatus(await json("v1/admin/status"));
  await refreshRates();
}

$("reload").addEventListener("click", async () => {
  try {
    clearError();
    await json("v1/admin/plugins/reload", { method: "POST" });
    await overview();
  } catch (err) {
    showError(err);
  }
});

// ---- Cache --------------------------------------------------------------

async function listKeys() {
  const page = await json(`v1/cache?pattern=${enc($("pattern").value)}&limit=200`);
  const trs = rows("keys", page.keys, (k) => [k], "no keys match");
  trs.forEach((tr, i) => tr.addEventListener("click", () => openKey(page.keys[i], tr)));
  $("keys-more").textContent = page.next_cursor ? "More keys match: narrow the pattern." : "";
}

async function openKey(key, tr) {
  document.querySelectorAll("#keys tr").forEach((r) => r.classList.remove("selected"));
  if (tr) tr.classList.add("selected");
  const resp = await call(`v1/cache/${enc(key)}`);
  if (resp.status === 404) {
    $("entry").hidden = true;
    await listKeys();
    return;
  }
  if (!resp.ok) throw new Error((await resp.json()).error.message);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const meta = await json(`v1/cache/${enc(key)}/meta`).catch(() => ({ tags: [] }));
  $("entry-tags").textContent = meta.tags.length ? meta.tags.join(", ") : "none";
  $("entry").hidden = false;
  $("entry").dataset.key = key;
  $("entry-key").textContent = key;
  $("entry-version").textContent = resp.headers.get("outrigger-version");
  const ttl = resp.headers.get("outrigger-ttl-ms");
  $("entry-ttl").textContent = ttl == null ? "never expires" : millis(Number(ttl));
  $("entry-size").textContent = bytes.length + " bytes";
  try {
    $("entry-value").textContent = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    $("entry-value").textContent = "(binary) " + [...bytes.slice(0, 256)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
  }
}

$("cache-form").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  $("entry").hidden = true;
  listKeys().catch(showError);
});

$("entry-delete").addEventListener("click", async () => {
  const key = $("entry").dataset.key;
  if (!confirm(`Delete ${key}?`)) return;
  try {
    await json(`v1/cache/${enc(key)}`, { method: "DELETE" });
    $("entry").hidden = true;
    await listKeys();
  } catch (err) {
    showError(err);
  }
});

// ---- Locks --------------------------------------------------------------

async function locks() {
  const [held, sems] = await Promise.all([json("v1/locks?limit=500"), json("v1/semaphores?limit=500")]);
  rows("locks", held.items, (u) => [u.name, String(u.fence), millis(u.ttl_ms)], "no lock is held");
  rows("semaphores", sems.items, (u) => [u.name, String(u.held), millis(u.ttl_ms)], "no permit is held");
}

// ---- Rate limits --------------------------------------------------------

async function peek() {
  const d = await json(`v1/ratelimit/${enc($("policy").value)}/peek`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ key: $("rl-key").value }),
  });
  $("rl-state").textContent = d.allowed
    ? `Allowed: a request now would leave ${d.remaining} of ${d.limit}; all of it again in ${millis(d.reset_after_ms)}.`
    : `Limited: retry in ${millis(d.retry_after_ms)}; all ${d.limit} again in ${millis(d.reset_after_ms)}.`;
}

$("ratelimit-form").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  peek().catch(showError);
});

$("rl-reset").addEventListener("click", async () => {
  try {
    clearError();
    await json(`v1/ratelimit/${enc($("policy").value)}/reset`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ key: $("rl-key").value }),
    });
    await peek();
  } catch (err) {
    showError(err);
  }
});

// ---- Streams (server-sent events over fetch, so the token can be sent) ---

let stream = null;

/// Follows an event stream, calling `onEvent(type, data)` per event, until
/// another stream replaces it.
async function follow(path, onEvent) {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  const resp = await call(path, { signal: controller.signal });
  if (!resp.ok) throw new Error((await resp.json()).error.message);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(type, JSON.parse(data.join("\n")));
    }
  }
}

function ignoreAbort(err) {
  if (err.name !== "AbortError") showError(err);
}

// ---- Presence -----------------------------------------------------------

async function members(room) {
  const page = await json(`v1/presence/${enc(room)}?limit=500`);
  rows("members", page.members, (m) => [m.member, millis(m.ttl_ms), JSON.stringify(m.metadata)], "nobody is here");
}

$("presence-form").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  const room = $("room").value;
  members(room)
    .then(() => follow(`v1/presence/${enc(room)}/events`, () => members(room).catch(showError)))
    .catch(ignoreAbort);
});

// ---- Pub/sub ------------------------------------------------------------

$("tail-form").addEventListener("submit", (e) => {
  e.preventDefault();
  clearError();
  $("messages").replaceChildren();
  const from = $("replay").checked ? "?from=0" : "";
  follow(`v1/pubsub/${enc($("channel").value)}${from}`, (type, m) => {
    if (type !== "message") return;
    const li = document.createElement("li");
    li.textContent = (m.offset || "live") + "  " + (m.payload != null ? m.payload : "(binary) " + m.payload_base64);
    $("messages").append(li);
  }).catch(ignoreAbort);
});

$("publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    clearError();
    const durable = $("durable").checked ? "?durable=true" : "";
    await json(`v1/pubsub/${enc($("channel").value)}${durable}`, { method: "POST", body: $("message").value });
    $("message").value = "";
  } catch (err) {
    showError(err);
  }
});

// ---- Pages --------------------------------------------------------------

const refreshers = { overview, locks };
let timer = null;

function show() {
  const page = (location.hash || "#overview").slice(1);
  for (const section of document.querySelectorAll("[data-page]")) {
    section.hidden = section.dataset.page !== page;
  }
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("current", a.getAttribute("href") === "#" + page);
  }
  clearInterval(timer);
  const refresh = refreshers[page];
  // The header's backend badge stays current on every page.
  const tick = () =>
    (refresh ? refresh() : json("v1/admin/status").then(renderStatus)).then(clearError, showError);
  tick();
  timer = setInterval(tick, 2000);
}

window.addEventListener("hashchange", show);
$("logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
show();
