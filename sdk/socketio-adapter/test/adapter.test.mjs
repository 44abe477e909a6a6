// The adapter across three Socket.IO servers, each with its own sidecar, on
// one real Redis; every feature asserted from the receiving clients' side.
// With SIO_BACKEND=memory the same cases run on one sidecar on the memory
// backend shared by the three servers (what instances sharing a sidecar
// see), but for the Redis outage.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { encode } from "@msgpack/msgpack";
import { Client } from "@outrigger/client";
import { clustered, HEARTBEAT, startBalancer, startClient, startRedis, startServer, startSidecar, waitFor } from "./cluster.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const namespace = `sio-${process.pid}`;
const CHANNEL = "socket.io#/#";

const memory = process.env.SIO_BACKEND === "memory";
let redis;
let sidecars;

/** A sidecar for one more app (`ns`): on Redis its own; on memory one
 * shared by the app's servers (separate sidecars there never meet). */
async function appSidecars(ns, n) {
  if (!memory) return Promise.all(Array.from({ length: n }, () => startSidecar({ redis, env: { OUTRIGGER_NAMESPACE: ns } })));
  const shared = await startSidecar();
  return Array(n).fill(shared);
}

/** Stops each distinct sidecar once. */
const stopAll = (list) => Promise.all([...new Set(list ?? [])].map((s) => s.stop()));
let servers;
let clients; // a1, a2 on A; b1 on B; c1 on C
let a1;
let a2;
let b1;
let c1;
let tag = 0;

before(async () => {
  if (!memory) redis = await startRedis();
  sidecars = await appSidecars(namespace, 3);
  servers = await Promise.all(sidecars.map((s) => startServer(s.url)));
  await clustered(servers);
  [a1, a2, b1, c1] = await Promise.all([
    startClient(servers[0].url, "a1"),
    startClient(servers[0].url, "a2"),
    startClient(servers[1].url, "b1"),
    startClient(servers[2].url, "c1"),
  ]);
  clients = [a1, a2, b1, c1];
});

after(async () => {
  for (const c of clients ?? []) c.socket.close();
  await Promise.all((servers ?? []).map((s) => s.io.close()));
  await stopAll(sidecars);
  redis?.stop();
});

/** Each server broadcasts `["end", tag, sender]` to all; resolves once every
 * client has them all (so, order per sender holding, everything each server
 * broadcast before has arrived too), then gives what each client got in
 * this round (`tag`-marked) without the end markers. */
async function round(t, senders = servers, receivers = clients) {
  for (const [i, s] of senders.entries()) s.io.emit("msg", "end", t, i);
  await waitFor(
    "every end marker",
    () => receivers.every((c) => c.got.filter(([kind, mt]) => kind === "end" && mt === t).length === senders.length),
  );
  const out = new Map();
  for (const c of receivers) out.set(c.name, c.got.filter(([kind, mt]) => mt === t && kind !== "end"));
  return out;
}

/** How many sessions the sidecars keep for reconnecting clients. */
async function sessionCount(sidecar) {
  let n = 0;
  for await (const _ of sidecar.keys("socket.io#session#*")) n++;
  return n;
}

test("broadcasts reach every client exactly once, in order per sender", async () => {
  const t = ++tag;
  for (let k = 0; k < 100; k++) for (const [i, s] of servers.entries()) s.io.emit("msg", "seq", t, i, k);
  const got = await round(t);
  for (const [name, msgs] of got) {
    for (const i of [0, 1, 2]) {
      const ks = msgs.filter(([, , sender]) => sender === i).map(([, , , k]) => k);
      assert.deepEqual(ks, Array.from({ length: 100 }, (_, k) => k), `${name} from server ${i}`);
    }
  }
});

test("rooms, except, local and volatile", async () => {
  await Promise.all([a1.join("r1"), b1.join("r1"), b1.join("r2"), c1.join("r2")]);
  const t = ++tag;
  const [A, B, C] = servers.map((s) => s.io);
  A.to("r1").emit("msg", "to-r1", t);
  C.to("r1").except("r2").emit("msg", "r1-not-r2", t);
  B.local.emit("msg", "local-b", t);
  C.to("r2").emit("msg", "to-r2", t);
  A.except("r1").emit("msg", "not-r1", t);
  const got = await round(t);
  const kinds = (name) => got.get(name).map(([kind]) => kind).sort();
  assert.deepEqual(kinds("a1"), ["r1-not-r2", "to-r1"]);
  assert.deepEqual(kinds("a2"), ["not-r1"]);
  assert.deepEqual(kinds("b1"), ["local-b", "to-r1", "to-r2"]);
  assert.deepEqual(kinds("c1"), ["not-r1", "to-r2"]);
  // Volatile packets are dropped for a client whose connection is busy at
  // that moment, so: sent until each client has one, none twice.
  const t2 = ++tag;
  const volatile = (c) => c.got.filter(([k, mt]) => k === "volatile" && mt === t2).map(([, , n]) => n);
  await waitFor("a volatile packet on every instance", () => {
    A.volatile.emit("msg", "volatile", t2, volatile(a1).length + Math.random());
    return clients.every((c) => volatile(c).length > 0);
  });
  await round(t2);
  for (const c of clients) assert.equal(new Set(volatile(c)).size, volatile(c).length, c.name);
});

test("binary payloads arrive byte for byte", async () => {
  const t = ++tag;
  const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  servers[1].io.emit("msg", "bin", t, bytes, { nested: Buffer.from([0, 1, 2]), text: "é" });
  const got = await round(t);
  for (const c of [a1, a2, c1]) {
    const [[, , payload, nested]] = got.get(c.name);
    assert.ok(Buffer.isBuffer(payload), c.name);
    assert.deepEqual(payload, bytes);
    assert.deepEqual(nested, { nested: Buffer.from([0, 1, 2]), text: "é" });
  }
});

test("socketsJoin, socketsLeave and disconnectSockets reach other instances", async () => {
  const [A, B, C] = servers.map((s) => s.io);
  const inRoom = (server, client) => server.io.of("/").adapter.rooms.get("joined")?.has(client.socket.id) ?? false;
  A.in(c1.socket.id).socketsJoin("joined");
  await waitFor("c1 joined on C", () => inRoom(servers[2], c1));
  let t = ++tag;
  B.to("joined").emit("msg", "joined", t);
  let got = await round(t);
  assert.deepEqual(got.get("c1").map(([k]) => k), ["joined"]);
  assert.deepEqual(got.get("a1"), []);

  C.in("joined").socketsLeave("joined");
  await waitFor("c1 left on C", () => !inRoom(servers[2], c1));
  t = ++tag;
  B.to("joined").emit("msg", "joined", t);
  got = await round(t);
  assert.deepEqual(got.get("c1"), []);

  const doomed = await startClient(servers[1].url, "doomed");
  const reason = once(doomed.socket, "disconnect");
  A.in(doomed.socket.id).disconnectSockets(true);
  assert.equal((await reason)[0], "io server disconnect");
  doomed.socket.close();
});

test("fetchSockets sees every instance's sockets, rooms and data", async () => {
  await c1.join("fetch");
  const all = await servers[0].io.fetchSockets();
  assert.deepEqual(all.map((s) => s.data.name).sort(), ["a1", "a2", "b1", "c1"]);
  const inFetch = await servers[1].io.in("fetch").fetchSockets();
  assert.deepEqual(inFetch.map((s) => [s.id, s.data.name]), [[c1.socket.id, "c1"]]);
  assert.ok(inFetch[0].rooms.has("fetch"));
  // A remote socket can be acted on: it reaches C by the adapter.
  inFetch[0].emit("msg", "direct", -1);
  await waitFor("c1 got the direct message", () => c1.got.some(([k]) => k === "direct"));
  assert.ok(!a1.got.some(([k]) => k === "direct"));
});

test("serverSideEmit, with and without acknowledgements, and client acknowledgements", async () => {
  const notes = [];
  for (const [i, s] of servers.entries()) {
    s.io.on("note", (x) => notes.push([i, x]));
    s.io.on("hello", (x, ack) => ack(`server ${i} got ${x}`));
  }
  servers[0].io.serverSideEmit("note", 7);
  await waitFor("both others noted", () => notes.length === 2);
  assert.deepEqual(notes.sort(), [[1, 7], [2, 7]]);
  const replies = await servers[0].io.serverSideEmitWithAck("hello", 5);
  assert.deepEqual(replies.sort(), ["server 1 got 5", "server 2 got 5"]);
  const answers = await servers[1].io.timeout(5_000).emitWithAck("question");
  assert.deepEqual(answers.sort(), ["answer:a1", "answer:a2", "answer:b1", "answer:c1"]);
});

test("a client reconnecting to another instance gets what it missed (connection state recovery)", async () => {
  const balancer = await startBalancer(servers[1].url);
  const sidecar = new Client({ url: sidecars[0].url });
  const x = await startClient(balancer.url, "x");
  try {
    await x.join("rec");
    const [A, B] = servers.map((s) => s.io);
    const t = ++tag;
    A.to("rec").emit("msg", "before", t);
    await waitFor("x got the first", () => x.got.length === 1);
    const id = x.socket.id;

    // Cut x off; it may come back only once B has kept its session.
    const sessions = () => sessionCount(sidecar);
    const kept = await sessions();
    balancer.point("http://127.0.0.1:9"); // nothing there: reconnections fail meanwhile
    const down = once(x.socket, "disconnect");
    balancer.cut();
    await down;
    await waitFor("B kept the session", async () => (await sessions()) > kept);
    A.to("rec").emit("msg", "missed-1", t);
    A.to("elsewhere").emit("msg", "not-for-x", t);
    B.emit("msg", "missed-2", t);
    A.to("rec").emit("msg", "missed-3", t);
    await round(t, servers, [a1, b1]); // all published and delivered to the others
    const back = once(x.socket, "connect");
    balancer.point(servers[2].url);
    await back;
    assert.equal(x.socket.recovered, true);
    assert.equal(x.socket.id, id);
    // The end markers were missed too: once they are in, all before them are.
    await waitFor("x got what it missed", () => x.got.filter(([k]) => k === "end").length === 3);
    const kinds = x.got.map(([k]) => k).filter((k) => k !== "end");
    // Once each; in order per sender (A: before, missed-1, missed-3; B: missed-2).
    assert.deepEqual(kinds.filter((k) => k !== "missed-2"), ["before", "missed-1", "missed-3"]);
    assert.equal(kinds.filter((k) => k === "missed-2").length, 1);
    // Rooms came back too: a broadcast to `rec` reaches x, live, once.
    const t2 = ++tag;
    A.to("rec").emit("msg", "after", t2);
    const got = await round(t2, servers, [a1, b1, x]);
    assert.deepEqual(got.get("x").map(([k]) => k), ["after"]);
  } finally {
    x.socket.close();
    balancer.close();
    sidecar.close();
  }
});

/** A client whose publishes of broadcasts answer 30 ms late (after Redis
 * took them): a slow sidecar, as seen from the adapter. (Empty batches,
 * the adapter's marks, answer at once.) */
class SlowClient extends Client {
  async publish(channel, payload, options) {
    const offset = await super.publish(channel, payload, options);
    if (payload.length > 40) await new Promise((r) => setTimeout(r, 30));
    return offset;
  }
}

test("recovery under a steady stream: no packet lost or repeated at the seam", async () => {
  // Two senders: A, and D, where x comes back; D's publishes answer late,
  // so its own broadcasts are still in flight while x's session is restored.
  const slow = new SlowClient({ url: sidecars[2].url });
  const d = await startServer(sidecars[2].url, { client: slow });
  const balancer = await startBalancer(servers[1].url);
  const sidecar = new Client({ url: sidecars[0].url });
  const x = await startClient(balancer.url, "x");
  const t = ++tag;
  const ks = (from) => x.got.filter(([, mt, f]) => mt === t && f === from).map(([, , , k]) => k);
  const sent = { A: 0, D: 0 };
  try {
    await clustered([...servers, d]);
    await x.join("stream");
    const pump = setInterval(() => {
      servers[0].io.to("stream").emit("msg", "s", t, "A", sent.A++);
      d.io.to("stream").emit("msg", "s", t, "D", sent.D++);
    }, 1);
    try {
      await waitFor("x is in the stream", () => ks("A").length >= 5 && ks("D").length >= 5);
      const kept = await sessionCount(sidecar);
      balancer.point("http://127.0.0.1:9");
      balancer.cut();
      await waitFor("B kept the session", async () => (await sessionCount(sidecar)) > kept);
      balancer.point(d.url);
      await once(x.socket, "connect");
      assert.equal(x.socket.recovered, true);
      const at = sent.A;
      await waitFor("the stream goes on", () => ks("A").length > at + 20);
    } finally {
      clearInterval(pump);
    }
    await waitFor("every packet", () => ks("A").length >= sent.A && ks("D").length >= sent.D, 5_000).catch(() => {});
    for (const from of ["A", "D"]) assert.deepEqual(ks(from), Array.from({ length: sent[from] }, (_, k) => k), from);
  } finally {
    x.socket.close();
    balancer.close();
    sidecar.close();
    await d.io.close();
    slow.close();
  }
});

test("a session is restored once, and not from an offset no longer retained", async () => {
  const adapter = servers[2].adapter();
  await assert.rejects(adapter.restoreSession("no-such-session", "1700000000000-0/0"), /no session/);
  await assert.rejects(adapter.restoreSession("p", "not an offset"), /not one this adapter gave/);
  const session = { sid: "s1", pid: `p-${process.pid}`, rooms: ["s1", "r"], data: { n: 1 } };
  servers[0].adapter().persistSession(session);
  const sidecar = new Client({ url: sidecars[2].url });
  try {
    await waitFor("the session is kept", async () => (await sidecar.get(`socket.io#session#${session.pid}`)) !== undefined);
  } finally {
    sidecar.close();
  }
  // An offset before anything the channel holds: history cannot vouch for
  // the gap, so no recovery (and the session is used up).
  await assert.rejects(adapter.restoreSession(session.pid, "1-0/0"), /no longer retained/);
  await assert.rejects(adapter.restoreSession(session.pid, "1-0/0"), /no session/);
});

test("two apps on one Redis through different sidecar namespaces never meet", async () => {
  const others = await appSidecars(`${namespace}-other`, 2);
  const apart = await Promise.all(others.map((s) => startServer(s.url)));
  const d1 = await startClient(apart[1].url, "d1");
  try {
    await clustered(apart);
    const t = ++tag;
    servers[0].io.emit("msg", "from-first-app", t);
    apart[0].io.emit("msg", "from-second-app", t);
    const mine = await round(t);
    const theirs = await round(t, apart, [d1]);
    assert.deepEqual(theirs.get("d1").map(([k]) => k), ["from-second-app"]);
    for (const c of clients) assert.deepEqual(mine.get(c.name).map(([k]) => k), ["from-first-app"], c.name);
    assert.equal(await servers[0].adapter().serverCount(), 3);
    assert.equal(await apart[0].adapter().serverCount(), 2);
  } finally {
    d1.socket.close();
    await Promise.all(apart.map((s) => s.io.close()));
    await stopAll(others);
  }
});

test("foreign and malformed messages on the channel are ignored and counted", async () => {
  const sidecar = new Client({ url: sidecars[0].url });
  const before = { ...servers[1].adapter().stats };
  const envelope = (...items) => encode(["outrigger.socket.io/1", items]);
  const garbage = [
    Buffer.from("not MessagePack at all \xff"),
    encode(["someone-else/1", []]),
    encode({ uid: "x", nsp: "/", type: 3 }),
    envelope({ uid: 1 }),
    envelope({ uid: "intruder", nsp: "/", type: 3, data: { packet: "nope" } }),
    envelope({ uid: "intruder", nsp: "/", type: 4, data: { opts: { rooms: [], except: [] }, rooms: 42 } }),
    envelope({ uid: "intruder", nsp: "/", type: 3, data: { packet: { type: 2, data: ["x"] }, opts: { rooms: 7, except: [] } } }),
    envelope({ uid: "intruder", nsp: "/", type: 99 }),
    envelope({ uid: "intruder", nsp: "/elsewhere", type: 2 }),
  ];
  try {
    for (const payload of garbage) await sidecar.publish(CHANNEL, payload, { durable: true });
  } finally {
    sidecar.close();
  }
  const t = ++tag;
  const got = await round(t); // still serving, on every instance
  assert.equal(got.size, 4);
  const stats = servers[1].adapter().stats;
  assert.equal(stats.foreign - before.foreign, 4);
  assert.equal(stats.malformed - before.malformed, 5);
  assert.equal(a1.got.concat(b1.got).filter(([k]) => k === "x").length, 0);
  for (const s of servers) assert.equal(s.io.of("/").adapter.rooms.has(42), false);
});

test("a closed server publishes nothing more, even closed while it was starting", async () => {
  for (const settle of [false, true]) {
    const server = await startServer(sidecars[0].url);
    if (settle) await clustered([...servers, server]);
    await server.io.close();
    const adapter = server.adapter();
    const published = adapter.stats.published;
    // Five heartbeat intervals: a timer armed again after close would
    // have published by then.
    await new Promise((r) => setTimeout(r, HEARTBEAT.heartbeatInterval * 5));
    assert.equal(adapter.stats.published, published, `settled: ${settle}`);
  }
  await clustered(servers);
});

test("a server killed with SIGKILL is noticed within the heartbeat timeout", async () => {
  const [sidecar] = memory ? [sidecars[0]] : await appSidecars(namespace, 1);
  const child = spawn(process.execPath, [path.join(here, "server-process.mjs")], {
    env: { ...process.env, SIDECAR_URL: sidecar.url },
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    const [line] = await once(child.stdout, "data");
    const k1 = await startClient(line.toString().trim(), "k1");
    await clustered(servers, 4);
    assert.ok((await servers[0].io.fetchSockets()).some((s) => s.data.name === "k1"));
    const killed = Date.now();
    child.kill("SIGKILL");
    // Asked before anyone noticed: answered when the dead one is dropped,
    // without it, not after fetchSockets' own 5 s timeout.
    const waiting = servers[0].io.fetchSockets();
    await waitFor("the others drop it", async () => (await servers[0].adapter().serverCount()) === 3, 10_000);
    // The cleanup runs every second: timeout plus at most one period (and
    // a second of slack for a loaded machine).
    const bound = HEARTBEAT.heartbeatTimeout + 2_000;
    assert.ok(Date.now() - killed < bound, `${Date.now() - killed} ms`);
    assert.deepEqual((await waiting).map((s) => s.data.name).sort(), ["a1", "a2", "b1", "c1"]);
    assert.ok(Date.now() - killed < bound, `${Date.now() - killed} ms`);
    const started = Date.now();
    const names = (await servers[0].io.fetchSockets()).map((s) => s.data.name).sort();
    assert.deepEqual(names, ["a1", "a2", "b1", "c1"]);
    assert.ok(Date.now() - started < 1_000, "answered without waiting for the dead one");
    k1.socket.close();
  } finally {
    child.kill("SIGKILL");
    if (sidecar !== sidecars[0]) await sidecar.stop();
  }
});

test("Redis killed under traffic: each instance serves its own; across instances resumes when it returns, with what was said meanwhile", { skip: memory && "Redis only" }, async () => {
  const t = ++tag;
  let sent = 0;
  const pump = setInterval(() => servers[0].io.emit("msg", "pump", t, sent++), 5);
  const pumped = (c) => c.got.filter(([k, mt]) => k === "pump" && mt === t).map(([, , k]) => k);
  try {
    await waitFor("traffic flows", () => pumped(b1).length > 10);
    redis.stop();
    // Asked before the others are dropped: time out, as documented.
    const started = Date.now();
    await assert.rejects(servers[0].io.timeout(300).fetchSockets(), /timeout reached: missing 2 responses/);
    await assert.rejects(servers[0].io.timeout(300).emitWithAck("question"), /operation has timed out/);
    assert.ok(Date.now() - started < 2_000, `${Date.now() - started} ms`);
    // Then they are dropped; requests to the cluster answer from this
    // instance alone, promptly.
    await waitFor("A is alone", async () => (await servers[0].adapter().serverCount()) === 1, 10_000);
    const names = (await servers[0].io.timeout(2_000).fetchSockets()).map((s) => s.data.name).sort();
    assert.deepEqual(names, ["a1", "a2"]);
    assert.deepEqual(await servers[0].io.serverSideEmitWithAck("hello", 1), []);
    const during = sent;
    await waitFor("A's clients keep getting the traffic", () => [a1, a2].every((c) => pumped(c).length > during + 20));
  } finally {
    clearInterval(pump);
  }
  // A's own clients got every packet, once, in order, across the outage.
  await waitFor("A's clients got all", () => [a1, a2].every((c) => pumped(c).length >= sent), 5_000).catch(() => {});
  for (const c of [a1, a2]) assert.deepEqual(pumped(c), Array.from({ length: sent }, (_, k) => k), c.name);

  redis = await startRedis({ port: redis.port });
  await clustered(servers);
  // What A broadcast meanwhile was kept by its sidecar and now arrives:
  // the last packet of the outage at least, and nothing twice.
  await waitFor("the outage's traffic", () => [b1, c1].every((c) => pumped(c).includes(sent - 1)));
  for (const c of [b1, c1]) {
    const ks = pumped(c);
    assert.equal(new Set(ks).size, ks.length, `${c.name} got a packet twice`);
  }
  const after = ++tag;
  for (let k = 0; k < 20; k++) servers[0].io.emit("msg", "seq", after, 0, k);
  const got = await round(after);
  for (const c of clients) {
    assert.deepEqual(got.get(c.name).filter(([, , s]) => s === 0).map(([, , , k]) => k), Array.from({ length: 20 }, (_, k) => k), c.name);
  }
});
