// Every call of the Node client against live sidecars (memory and Redis;
// TCP and the Unix socket), its idioms, and the error mapping.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import express from "express";
import Fastify from "fastify";
import {
  Client,
  Conflict,
  expressRateLimit,
  fastifyRateLimit,
  InvalidArgument,
  LockLost,
  NotFound,
  PreconditionFailed,
  RateLimited,
  TooLarge,
  Unavailable,
} from "../dist/index.js";
import { freePort, startRedis, startSidecar, unique } from "./live.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let redis;
before(async () => {
  redis = await startRedis();
});
after(() => redis.stop());

for (const backend of ["memory", "redis"]) {
  for (const transport of ["tcp", "unix"]) {
    describe(`${backend} over ${transport}`, () => {
      let sidecar;
      let client;
      before(async () => {
        sidecar = await startSidecar({ redis: backend === "redis" ? redis : undefined });
        client = new Client(transport === "unix" ? { url: sidecar.url, socket: sidecar.socket } : { url: sidecar.url });
      });
      after(async () => {
        client.close();
        await sidecar.stop();
      });

      test("cache: versions, tags, conditions, listing", async (t) => {
        const key = unique(t.name);
        assert.equal(await client.get(key), undefined);
        const v1 = await client.set(key, Buffer.from([0, 97, 255]), { ttlMs: 60_000, tags: [key] });
        const entry = await client.get(key);
        assert.deepEqual([entry.value, entry.version], [Buffer.from([0, 97, 255]), v1]);
        assert.ok(entry.ttlMs > 0 && entry.ttlMs <= 60_000);
        await assert.rejects(client.set(key, "x", { ifAbsent: true }), PreconditionFailed);
        await assert.rejects(client.set(key, "x", { ifVersion: v1 + 1000 }), PreconditionFailed);
        assert.ok((await client.set(key, "y", { ifVersion: v1, tags: [key] })) > v1);
        assert.equal(await client.invalidate({ tags: [key] }), 1);
        assert.equal(await client.delete(key), false);
        for (let i = 0; i < 7; i++) await client.set(`${key}:k${i}`, "v");
        const keys = [];
        for await (const k of client.keys(`${key}:*`, { page: 3 })) keys.push(k);
        assert.equal(keys.length, 7);
      });

      test("cached computes once under 50 concurrent misses", async (t) => {
        const name = unique(t.name);
        let calls = 0;
        let open;
        const gate = new Promise((r) => {
          open = r;
        });
        const slow = client.cached(name, async (n) => {
          calls++;
          await gate;
          return { n };
        }, { ttlMs: 60_000 });
        const all = Promise.all(Array.from({ length: 50 }, () => slow(1)));
        await sleep(300);
        open();
        assert.deepEqual(await all, Array(50).fill({ n: 1 }));
        assert.equal(calls, 1);
        assert.deepEqual(await slow(1), { n: 1 });
        assert.equal(calls, 1);
      });

      test("locks: acquire, extend, release, withLock keeps it alive", async (t) => {
        const name = unique(t.name);
        const lease = await client.acquire(name, { ttlMs: 5000 });
        assert.ok(lease.fence >= 1);
        assert.equal(await client.acquire(name, { ttlMs: 5000, waitMs: 100 }), undefined);
        assert.equal(await client.extend(lease, 5000), true);
        assert.equal(await client.release(lease), true);
        assert.equal(await client.release(lease), false);
        const fence = await client.withLock(name, { ttlMs: 600 }, async (held) => {
          await sleep(1500); // past twice the TTL: kept alive
          assert.equal(await client.acquire(name, { ttlMs: 1000 }), undefined, "still held");
          return held.fence;
        });
        assert.ok(fence > lease.fence);
        const again = await client.acquire(name, { ttlMs: 1000 });
        assert.ok(again, "released at the end");
        await assert.rejects(client.withLock(name, { ttlMs: 1000, waitMs: 200 }, async () => 1), Conflict);
        await client.release(again);
      });

      test("a lost lock rejects the block's next call and aborts its signal", async (t) => {
        const name = unique(t.name);
        let aborted = false;
        await assert.rejects(
          client.withLock(name, { ttlMs: 3000 }, async (held) => {
            held.signal.addEventListener("abort", () => {
              aborted = true;
            });
            assert.equal(await client.release(held), true);
            assert.ok(await client.acquire(name, { ttlMs: 5000 }), "another holder takes it");
            const deadline = Date.now() + 5000;
            while (Date.now() < deadline) {
              await client.get(`${name}:probe`); // rejects with LockLost once noticed
              await sleep(100);
            }
            throw new Error("the loss was never reported");
          }),
          LockLost,
        );
        assert.ok(aborted);
      });

      test("semaphores", async (t) => {
        const name = unique(t.name);
        const a = await client.acquirePermit(name, { limit: 2, ttlMs: 5000 });
        const b = await client.acquirePermit(name, { limit: 2, ttlMs: 5000 });
        assert.ok(a && b);
        assert.equal(await client.acquirePermit(name, { limit: 2, ttlMs: 5000 }), undefined);
        assert.equal(await client.releasePermit(name, a), true);
        assert.ok(await client.acquirePermit(name, { limit: 2, ttlMs: 5000 }));
      });

      test("rate limits: check, peek, reset, inline, check-all, limit()", async (t) => {
        const key = unique(t.name);
        for (const remaining of [4, 3, 2, 1, 0]) {
          const d = await client.check("login", key);
          assert.deepEqual([d.allowed, d.remaining], [true, remaining]);
        }
        const denied = await client.check("login", key);
        assert.equal(denied.allowed, false);
        assert.ok(denied.retryAfterMs > 0);
        assert.equal((await client.peek("login", key)).allowed, false);
        assert.equal(await client.resetLimit("login", key), true);
        assert.equal((await client.peek("login", key)).remaining, 4);
        const limit = { algorithm: "fixed_window", limit: 1, periodMs: 60_000 };
        assert.equal((await client.check("adhoc", key, { limit })).allowed, true);
        assert.equal((await client.check("adhoc", key, { limit })).allowed, false);
        const both = [
          { policy: "login", key: `{${key}}:u` },
          { policy: "ip", key: `{${key}}:ip`, cost: 2 },
        ];
        assert.ok((await client.checkAll(both)).every((d) => d.allowed));
        const refused = await client.checkAll(both);
        assert.deepEqual(refused.map((d) => d.allowed), [true, false]);
        assert.equal((await client.peek("login", `{${key}}:u`)).remaining, 3, "nothing taken");
        await assert.rejects(client.limit("ip", `{${key}}:ip`), RateLimited);
        await assert.rejects(client.check("no-such-policy", key), NotFound);
        await assert.rejects(client.check("login", key, { cost: 99 }), InvalidArgument);
      });

      test("work queues: enqueue, claim, settle and a worker loop", async (t) => {
        const queue = unique(t.name);
        const first = await client.enqueue(queue, "a", { dedupId: "once" });
        assert.equal(first.duplicate, false);
        assert.deepEqual(await client.enqueue(queue, "again", { dedupId: "once" }), { ...first, duplicate: true });
        await client.enqueue(queue, Buffer.from([255, 0]), { maxAttempts: 1 });
        const [a, binary] = await client.claim(queue, { max: 10 });
        assert.equal(a.id, first.id);
        assert.equal(a.payload.toString(), "a");
        assert.equal(a.dedupId, "once");
        assert.deepEqual([...binary.payload], [255, 0]);
        assert.ok((await client.extendJob(a, 60_000)) > a.enqueuedAtMs);
        await client.ack(a);
        await assert.rejects(client.ack(a), NotFound);
        assert.equal(await client.nack(binary, { error: "no" }), "dead");
        assert.deepEqual(await client.queueStats(queue), { ready: 0, delayed: 0, inFlight: 0, dead: 1, oldestReadyMs: undefined });
        await assert.rejects(client.ack({ ...binary, receipt: "made-up" }), Conflict);
        await assert.rejects(client.enqueue(queue, "x", { maxAttempts: 0 }), InvalidArgument);
        // A claim acks finished jobs in the same request, all or none.
        await client.enqueue(queue, "b");
        await client.enqueue(queue, "c");
        const [b] = await client.claim(queue);
        await assert.rejects(client.claim(queue, { ack: [b, a] }), NotFound);
        const [c] = await client.claim(queue, { ack: [b] });
        assert.deepEqual([b.payload.toString(), c.payload.toString()], ["b", "c"]);
        await assert.rejects(client.claim("elsewhere", { ack: [c] }), TypeError);
        assert.deepEqual(await client.claim(queue, { ack: [c] }), []);
        assert.equal((await client.queueStats(queue)).inFlight, 0);
        // The worker loop: jobs enqueued while it waits, each once, until aborted.
        const stop = new AbortController();
        const got = [];
        const worker = (async () => {
          for await (const job of client.consume(queue, { waitMs: 1_000, signal: stop.signal })) {
            got.push(job.payload.toString());
            await client.ack(job);
            if (got.length === 3) stop.abort();
          }
        })();
        for (const p of ["1", "2", "3"]) await client.enqueue(queue, p);
        await worker;
        assert.deepEqual(got, ["1", "2", "3"]);
        assert.equal((await client.queueStats(queue)).inFlight, 0);
      });

      test("counters and maps", async (t) => {
        const name = unique(t.name);
        assert.equal((await client.counter(name)).exists, false);
        assert.equal((await client.incr(name, 2, { ttlMs: 60_000 })).value, 2);
        await assert.rejects(client.incr(name, 5, { max: 3 }), PreconditionFailed);
        assert.equal(await client.resetCounter(name), true);
        const v1 = await client.mapSet(name, "user", "ada", { ttlMs: 60_000 });
        const applied = await client.mapUpdate(
          name,
          [
            { op: "set", field: "raw", value: Buffer.from([255, 0]) },
            { op: "incr", field: "views", by: 1 },
            { op: "incr", field: "score", by: 0.5 },
            { op: "delete", field: "nothing" },
          ],
          { ttlMs: 3_600_000, sliding: true },
        );
        assert.ok(applied.version > v1);
        assert.deepEqual(applied.outcomes, [null, 1, 0.5, false]);
        const got = await client.mapGet(name, "user", "raw", "absent");
        assert.deepEqual([...got.fields.keys()].sort(), ["raw", "user"]);
        assert.equal(got.fields.get("user").version, v1);
        assert.deepEqual(got.fields.get("raw").value, Buffer.from([255, 0]));
        assert.equal(await client.mapIncr(name, "views", 2), 3);
        const names = [];
        for await (const [field] of client.mapEntries(name, { page: 2 })) names.push(field);
        assert.deepEqual(names.sort(), ["raw", "score", "user", "views"]);
        await assert.rejects(client.mapSet(name, "user", "eve", { if: { version: v1 - 1 } }), PreconditionFailed);
        await assert.rejects(client.mapUpdate(name, [{ op: "set", field: "x", value: "1" }], { ifVersion: 1 }), PreconditionFailed);
        await assert.rejects(client.mapIncr(name, "user"), Conflict);
        assert.equal(await client.mapDelete(name, "raw"), true);
        assert.equal(await client.mapDelete(name), true);
        assert.equal((await client.mapGet(name)).version, 0);
      });

      test("presence", async (t) => {
        const room = unique(t.name);
        assert.equal(await client.join(room, "alice", { metadata: { name: "Alice" } }), true);
        assert.equal(await client.join(room, "alice", { metadata: { name: "Alice" } }), false);
        assert.deepEqual((await client.members(room)).members.map((m) => [m.member, m.metadata]), [["alice", { name: "Alice" }]]);
        assert.ok((await client.rooms("alice")).includes(room));
        assert.equal(await client.leave(room, "alice"), true);
        await client.present(room, "bob", { ttlMs: 600 }, async () => {
          await sleep(1500); // past the TTL: kept by the heartbeat
          assert.deepEqual((await client.members(room)).members.map((m) => m.member), ["bob"]);
        });
        assert.deepEqual((await client.members(room)).members, []);
      });

      test("publish and subscribe from an offset", async (t) => {
        const channel = unique(t.name);
        const first = await client.publish(channel, "one", { durable: true });
        const second = await client.publish(channel, Buffer.from([255, 116]), { durable: true });
        const got = [];
        for await (const msg of client.subscribe(channel, { after: first })) {
          got.push(msg);
          if (got.length === 1) await client.publish(channel, "three", { durable: true });
          if (msg.payload.toString() === "three") break;
        }
        assert.deepEqual(got[0].payload, Buffer.from([255, 116]));
        assert.equal(got[0].offset, second);
        assert.equal(got.length, 2);
      });

      test("history, trim, and the end of a replay", async (t) => {
        const channel = unique(t.name);
        const offsets = [];
        for (const p of ["a", "b", "c", Buffer.from([0, 255])]) offsets.push(await client.publish(channel, p, { durable: true }));
        await client.publish(channel, "live only");
        const last = await client.history(channel, { last: 2 });
        assert.deepEqual(last.messages.map((m) => m.payload), [Buffer.from("c"), Buffer.from([0, 255])]);
        assert.equal(last.nextCursor, undefined);
        assert.equal(last.messages[0].publishedAtMs, Number(offsets[2].split("-")[0]));
        const page = await client.history(channel, { order: "desc", limit: 3 });
        assert.deepEqual(page.messages.map((m) => m.offset), [offsets[3], offsets[2], offsets[1]]);
        const rest = await client.history(channel, { order: "desc", limit: 3, cursor: page.nextCursor });
        assert.deepEqual(rest.messages.map((m) => m.offset), [offsets[0]]);
        let replayed = "not yet";
        for await (const m of client.subscribe(channel, { after: offsets[1], onReplayed: (o) => { replayed = o; } })) {
          if (m.offset === offsets[3]) {
            assert.equal(replayed, "not yet", "the marker comes after the missed messages");
            await client.publish(channel, "after");
          } else if (m.payload.toString() === "after") break;
        }
        assert.equal(replayed, offsets[3]);
        const once = await client.publish(channel, "once", { durable: true, idempotencyKey: "k" });
        assert.equal(await client.publish(channel, "twice", { durable: true, idempotencyKey: "k" }), once);
        assert.deepEqual((await client.history(channel, { last: 1 })).messages.map((m) => m.payload.toString()), ["once"]);
        assert.equal(await client.trim(channel, offsets[2]), 2);
        assert.deepEqual((await client.history(channel)).messages.map((m) => m.offset), [offsets[2], offsets[3], once]);
        // Resuming past the trim: told what is gone, with the epoch, before the replay.
        const { epoch } = await client.history(channel, { last: 1 });
        assert.ok(epoch);
        const told = [];
        for await (const m of client.subscribe(channel, { after: offsets[0], epoch, onResumed: (r) => told.push(r) })) {
          assert.deepEqual(told, [{ recovered: false, epoch, from: offsets[2] }]);
          assert.equal(m.offset, offsets[2]);
          break;
        }
        for await (const m of client.subscribe(channel, { after: offsets[2], epoch, onResumed: (r) => told.push(r) })) {
          assert.deepEqual(told[1], { recovered: true, epoch, from: offsets[3] });
          assert.equal(m.offset, offsets[3]);
          break;
        }
        for (const p of ["x", "y"]) await client.publish(`${channel}:short`, p, { durable: true, maxLen: 1, maxAgeMs: 60_000 });
        assert.deepEqual((await client.history(`${channel}:short`)).messages.map((m) => m.payload.toString()), ["y"]);
      });

      test("errors are typed", async (t) => {
        await assert.rejects(client.set("k".repeat(600), "v"), TooLarge);
        await assert.rejects(client.set(unique(t.name), "v", { ttlMs: 10 ** 12 }), InvalidArgument);
        assert.throws(() => client.set("k", "v", { ifAbsent: true, ifPresent: true }), TypeError);
        assert.ok(String((await client.status()).namespace).startsWith("node"));
      });

      test("Express and Fastify routes behind a rate limit", async (t) => {
        const key = unique(t.name);
        const app = express();
        app.get("/hello", expressRateLimit(client, "ip", (req) => `${key}:e:${req.get("x-user")}`), (_req, res) => {
          res.json({ hello: "express" });
        });
        const server = app.listen(0);
        await new Promise((r) => server.once("listening", r));
        const url = `http://127.0.0.1:${server.address().port}/hello`;
        const call = (user) => fetch(url, { headers: { "x-user": user } });
        assert.deepEqual([(await call("ann")).status, (await call("ann")).status], [200, 200]);
        const denied = await call("ann");
        assert.equal(denied.status, 429);
        assert.ok(Number(denied.headers.get("retry-after")) > 0);
        assert.equal((await denied.json()).error.code, "rate_limited");
        assert.equal((await call("bob")).status, 200);
        server.close();

        const fastify = Fastify();
        fastify.addHook("onRequest", fastifyRateLimit(client, "ip", (req) => `${key}:f:${req.headers["x-user"]}`));
        fastify.get("/hello", async () => ({ hello: "fastify" }));
        const inject = (user) => fastify.inject({ method: "GET", url: "/hello", headers: { "x-user": user } });
        assert.deepEqual([(await inject("ann")).statusCode, (await inject("ann")).statusCode], [200, 200]);
        const no = await inject("ann");
        assert.equal(no.statusCode, 429);
        assert.ok(Number(no.headers["retry-after"]) > 0);
        assert.equal((await inject("bob")).statusCode, 200);
        await fastify.close();
      });
    });
  }
}

test("a subscription survives a sidecar restart, no message lost or repeated", async (t) => {
  let sidecar = await startSidecar({ redis });
  const client = new Client({ url: sidecar.url });
  const channel = unique(t.name);
  const first = await client.publish(channel, "m0", { durable: true });
  await client.publish(channel, "m1", { durable: true });
  const messages = client.subscribe(channel, { after: first });
  const got = [(await messages.next()).value.payload.toString()];
  sidecar = await sidecar.restart();
  try {
    for (const m of ["m2", "m3", "m4"]) await client.publish(channel, m, { durable: true });
    while (got.length < 4) got.push((await messages.next()).value.payload.toString());
    await messages.return();
  } finally {
    client.close();
    await sidecar.stop();
  }
  assert.deepEqual(got, ["m1", "m2", "m3", "m4"]);
});

for (const durable of [true, false]) {
  test(`a reconnected subscription ${durable ? "resumes" : "does not replay"} (durable: ${durable})`, async (t) => {
    // While the subscriber's sidecar is down, another publishes m2.
    let sidecar = await startSidecar({ redis });
    const namespace = `node-durable-${process.pid}-${durable}`;
    await sidecar.stop();
    const port = Number(sidecar.url.split(":").at(-1));
    sidecar = await startSidecar({ redis, port, env: { OUTRIGGER_NAMESPACE: namespace } });
    const other = await startSidecar({ redis, env: { OUTRIGGER_NAMESPACE: namespace } });
    const publisher = new Client({ url: other.url });
    const subscriber = new Client({ url: sidecar.url });
    const channel = unique(t.name);
    try {
      const first = await publisher.publish(channel, "m0", { durable: true });
      await publisher.publish(channel, "m1", { durable: true });
      const messages = subscriber.subscribe(channel, { after: first, durable });
      assert.equal((await messages.next()).value.payload.toString(), "m1");
      await sidecar.stop();
      await publisher.publish(channel, "m2", { durable: true });
      sidecar = await startSidecar({ redis, port, env: { OUTRIGGER_NAMESPACE: namespace } });
      const received = [];
      const reading = (async () => {
        for (;;) {
          const payload = (await messages.next()).value.payload.toString();
          received.push(payload);
          if (payload === "live") return;
        }
      })();
      let done = false;
      reading.then(() => {
        done = true;
      });
      const deadline = Date.now() + 10_000;
      while (!done && Date.now() < deadline) {
        await publisher.publish(channel, "live", { durable: true });
        await sleep(200);
      }
      await reading;
      await messages.return();
      assert.equal(received.includes("m2"), durable, JSON.stringify(received));
    } finally {
      publisher.close();
      subscriber.close();
      await sidecar.stop();
      await other.stop();
    }
  });
}

test("onOpen says when the subscription is live; aborting ends it at once", async (t) => {
  const sidecar = await startSidecar({ redis });
  const client = new Client({ url: sidecar.url });
  const channel = unique(t.name);
  const control = new AbortController();
  try {
    let opened;
    const open = new Promise((r) => {
      opened = r;
    });
    const messages = client.subscribe(channel, { signal: control.signal, onOpen: () => opened() });
    const first = messages.next();
    await open; // no message yet: the answer's head alone
    await client.publish(channel, "live-only");
    assert.equal((await first).value.payload.toString(), "live-only");
    const pending = messages.next();
    const started = Date.now();
    control.abort();
    assert.equal((await pending).done, true);
    assert.ok(Date.now() - started < 1000, "ended by the abort, not by a keep-alive");
  } finally {
    client.close();
    await sidecar.stop();
  }
});

test("a subscriber that falls behind catches up from the stream (durable)", { timeout: 20_000 }, async (t) => {
  // Four messages of buffer: a reader that stops reading is told `lagged`
  // by the sidecar; the client reopens after its last offset.
  const sidecar = await startSidecar({ redis, env: { OUTRIGGER_PUBSUB__SUBSCRIBER_BUFFER: "4" } });
  const client = new Client({ url: sidecar.url });
  const channel = unique(t.name);
  try {
    let opened;
    const open = new Promise((r) => {
      opened = r;
    });
    const messages = client.subscribe(channel, { onOpen: () => opened() });
    const first = messages.next();
    await open;
    const big = "x".repeat(64 * 1024);
    for (let i = 0; i < 200; i++) await client.publish(channel, `${i}:${big}`, { durable: true });
    const got = [(await first).value.payload.toString().split(":")[0]];
    while (got.length < 200) got.push((await messages.next()).value.payload.toString().split(":")[0]);
    await messages.return();
    assert.deepEqual(got, Array.from({ length: 200 }, (_, i) => String(i)));
  } finally {
    client.close();
    await sidecar.stop();
  }
});

test("close lets calls in flight finish, then leaves no connection open", async (t) => {
  const sidecar = await startSidecar();
  const client = new Client({ url: sidecar.url });
  const port = Number(new URL(sidecar.url).port);
  // Sockets to this sidecar opened from here on (the readiness probe's
  // may still be open).
  const earlier = new Set(process._getActiveHandles());
  const sockets = () => process._getActiveHandles().filter((h) => h.remotePort === port && !earlier.has(h)).length;
  try {
    const before = 0;
    const name = unique(t.name);
    const lease = await client.acquire(name, { ttlMs: 5_000 });
    const waiting = client.acquire(name, { ttlMs: 1_000, waitMs: 300 }); // in flight
    client.close();
    assert.equal(await waiting, undefined, "it finished");
    assert.ok(lease);
    const deadline = Date.now() + 2_000;
    while (sockets() > before && Date.now() < deadline) await sleep(10);
    assert.equal(sockets(), before, "its connection was closed, not kept");
  } finally {
    await sidecar.stop();
  }
});

test("an unreachable sidecar is Unavailable within the timeout", async () => {
  const port = await freePort();
  const client = new Client({ url: `http://127.0.0.1:${port}`, timeoutMs: 1000 });
  const started = Date.now();
  await assert.rejects(client.get("k"), Unavailable);
  assert.ok(Date.now() - started < 2000);
  client.close();
});
