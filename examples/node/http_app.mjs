// A web backend's use of the sidecar with fetch and Server-Sent Events
// (Node's built-ins only). Checks every answer; exits non-zero on the first
// surprise. OUTRIGGER_URL says where the sidecar is.

const SIDECAR = process.env.OUTRIGGER_URL ?? "http://127.0.0.1:7480";
const RUN = `${Date.now()}${Math.floor(Math.random() * 1e6)}`;

function check(what, ok) {
  if (!ok) {
    console.error(`FAIL ${what}`);
    process.exit(1);
  }
  console.log(`ok   ${what}`);
}

const post = (path, body) =>
  fetch(SIDECAR + path, { method: "POST", body: JSON.stringify(body) });

// Login throttling.
for (let i = 0; i < 5; i++) {
  const r = await post("/v1/ratelimit/login/check", { key: `dana-${RUN}` });
  check("a login attempt within the burst is allowed", r.status === 200);
}
const throttled = await post("/v1/ratelimit/login/check", { key: `dana-${RUN}` });
check("the sixth is throttled (429)", throttled.status === 429);
check("Retry-After tells when to come back", Number(throttled.headers.get("retry-after")) > 0);

// Session cache.
let r = await fetch(`${SIDECAR}/v1/cache/session:${RUN}?ttl_ms=60000&tags=user:${RUN}`, {
  method: "PUT",
  body: JSON.stringify({ user: "dana" }),
});
check("session stored", r.status === 200);
r = await fetch(`${SIDECAR}/v1/cache/session:${RUN}`);
check("session read back", (await r.json()).user === "dana");
r = await post("/v1/cache/invalidate", { tags: [`user:${RUN}`] });
check("logout invalidates the session", (await r.json()).deleted === 1);

// A lock around checkout.
r = await post(`/v1/locks/checkout-${RUN}/acquire`, { ttl_ms: 10000 });
const lease = await r.json();
check("checkout lock taken", r.status === 200 && lease.fence >= 1);
r = await post(`/v1/locks/checkout-${RUN}/acquire`, { ttl_ms: 10000 });
check("a second checkout is refused (409)", r.status === 409);
r = await post(`/v1/locks/checkout-${RUN}/release`, { token: lease.token });
check("released", r.status === 200);

// Who is online.
for (const member of ["erin", "frank"]) {
  await fetch(`${SIDECAR}/v1/presence/lobby-${RUN}/${member}`, {
    method: "PUT",
    body: JSON.stringify({ metadata: { name: member }, ttl_ms: 30000 }),
  });
}
r = await fetch(`${SIDECAR}/v1/presence/lobby-${RUN}`);
const online = (await r.json()).members.map((m) => m.member).sort();
check("Erin and Frank are online", JSON.stringify(online) === '["erin","frank"]');

// Room messages over Server-Sent Events, read from a streaming fetch.
const events = new AbortController();
const sse = await fetch(`${SIDECAR}/v1/pubsub/room-${RUN}`, { signal: events.signal });
check("subscribed (the response has started)", sse.status === 200);
for (const text of ["hello", "world"]) {
  const p = await fetch(`${SIDECAR}/v1/pubsub/room-${RUN}`, { method: "POST", body: text });
  check(`published ${text}`, p.status === 200);
}
const received = [];
const decoder = new TextDecoder();
let buffered = "";
for await (const chunk of sse.body) {
  buffered += decoder.decode(chunk, { stream: true });
  let end;
  while ((end = buffered.indexOf("\n\n")) >= 0) {
    const block = buffered.slice(0, end);
    buffered = buffered.slice(end + 2);
    const data = block.split("\n").find((l) => l.startsWith("data:"));
    if (data) received.push(JSON.parse(data.slice(5)).payload);
  }
  if (received.length === 2) break;
}
events.abort();
check("the room got both messages, in order", JSON.stringify(received) === '["hello","world"]');
console.log("node http example: all checks passed");
