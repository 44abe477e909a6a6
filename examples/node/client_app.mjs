// A web backend's use of the sidecar through the Node client library
// (sdk/client-node, `@outrigger/client`): login throttling, a session cache
// and a cached function, a lock around checkout, "who is online", a
// session map and room messages. Checks every answer; exits non-zero on the
// first surprise. OUTRIGGER_URL says where the sidecar is.

import { Client, Conflict, PreconditionFailed } from "@outrigger/client";

const RUN = `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
const client = new Client();

function check(what, ok) {
  if (!ok) {
    console.error(`FAIL ${what}`);
    process.exit(1);
  }
  console.log(`ok   ${what}`);
}

// Login throttling.
const user = `dana-${RUN}`;
for (let i = 0; i < 5; i++) check("a login attempt within the burst is allowed", (await client.check("login", user)).allowed);
const throttled = await client.check("login", user);
check("the sixth is throttled", !throttled.allowed);
check("with when to come back", throttled.retryAfterMs > 0);
await client.resetLimit("login", user); // a successful login clears the count
check("after a good login the burst is back", (await client.peek("login", user)).remaining === 4);

// Session cache.
const key = `session:${RUN}`;
const version = await client.set(key, '{"user":"dana"}', { ttlMs: 60_000, tags: [`user:${RUN}`] });
const entry = await client.get(key, { refreshTtl: true });
check("session read back", entry?.value.toString() === '{"user":"dana"}' && entry.version === version);
try {
  await client.set(key, "x", { ifVersion: version + 1000 });
  check("a stale compare-and-set is refused", false);
} catch (err) {
  check("a stale compare-and-set is refused", err instanceof PreconditionFailed);
}
check("logging out invalidates the user's sessions", (await client.invalidate({ tags: [`user:${RUN}`] })) === 1);
let computed = 0;
const profile = client.cached(`profile:${RUN}`, async (id) => {
  computed++;
  return { id };
}, { ttlMs: 60_000 });
check("a cached function computes once", JSON.stringify([await profile(7), await profile(7)]) === '[{"id":7},{"id":7}]' && computed === 1);

// A lock around checkout.
const lockName = `checkout-${RUN}`;
await client.withLock(lockName, { ttlMs: 10_000 }, async (lease) => {
  check("checkout lock held", lease.fence >= 1);
  try {
    await client.withLock(lockName, { ttlMs: 10_000, waitMs: 100 }, async () => undefined);
    check("a concurrent checkout waits, then gives up", false);
  } catch (err) {
    check("a concurrent checkout waits, then gives up", err instanceof Conflict);
  }
});
check("released when the callback ends", (await client.acquire(lockName, { ttlMs: 1000 })) !== undefined);

// Who is online.
const room = `lobby-${RUN}`;
await client.join(room, "alice", { metadata: { name: "Alice" } });
await client.present(room, "bob", { metadata: { name: "Bob" } }, async () => {
  const names = (await client.members(room)).members.map((m) => m.metadata.name).sort();
  check("Alice and Bob are online", JSON.stringify(names) === '["Alice","Bob"]');
});
check("Bob left with his callback", (await client.members(room)).members.length === 1);

// A session map, field by field.
const session = `session-map:${RUN}`;
await client.mapUpdate(session, [{ op: "set", field: "user", value: "dana" }, { op: "incr", field: "views", by: 1 }], { ttlMs: 86_400_000, sliding: true });
await client.mapIncr(session, "views");
const fields = (await client.mapGet(session, "user", "views")).fields;
check("a session map", fields.get("user").value.toString() === "dana" && fields.get("views").value.toString() === "2");

// Room messages: a durable channel, read from an offset.
const channel = `room-${RUN}`;
const first = await client.publish(channel, "hello", { durable: true });
for (const text of ["hi", "how are you?", "bye"]) await client.publish(channel, text, { durable: true });
const received = [];
for await (const message of client.subscribe(channel, { after: first })) {
  received.push(message.payload.toString());
  if (received.length === 3) break;
}
check("the room got every message, in order", JSON.stringify(received) === '["hi","how are you?","bye"]');

client.close();
console.log("node client example: all checks passed");
