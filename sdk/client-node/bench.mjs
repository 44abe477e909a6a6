// The Node client next to ioredis, the same operations in one run, at
// concurrency 1: what an app pays for going through the sidecar from Node.
// The queue handoff is also measured with BullMQ on the same Redis.
//
//   node bench.mjs --url URL --socket PATH --redis REDIS_URL [--seconds S]
//
// Prints one JSON row per (operation, way), as sdk/client-python/bench.py
// does. Uses the built client (dist/).

import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { Client } from "./dist/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const scripts = path.join(here, "../../sidecar/src/primitives");
const { values: args } = parseArgs({
  options: { url: { type: "string" }, socket: { type: "string" }, redis: { type: "string" }, seconds: { type: "string", default: "2" } },
});
const VALUE = Buffer.alloc(100, "x");

async function measure(seconds, op) {
  for (let i = 0; i < 50; i++) await op(i);
  const samples = [];
  const deadline = performance.now() + seconds * 1000;
  for (let i = 0; performance.now() < deadline; i++) {
    const start = process.hrtime.bigint();
    await op(i);
    samples.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  return samples;
}

const quantile = (samples, q) => {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};

const redis = new Redis(args.redis);
const read = (p) => readFileSync(path.join(scripts, p), "utf8");
redis.defineCommand("lockAcquire", { numberOfKeys: 2, lua: read("lock/lock_acquire.lua") });
redis.defineCommand("lockRelease", { numberOfKeys: 1, lua: read("lock/lock_release.lua") });
redis.defineCommand("gcra", { numberOfKeys: 1, lua: read("ratelimit/lib.lua") + read("ratelimit/gcra.lua") });
await redis.set("nodedirect:hit", VALUE);

const run = Math.random().toString(16).slice(2, 10);
const ways = {
  "cache get (hit, near cache)": { direct: () => redis.getBuffer("nodedirect:hit") },
  "cache get (miss)": { direct: (i) => redis.get(`nodedirect:miss:${i}`) },
  "lock acquire+release": {
    direct: async (i) => {
      const [ok] = await redis.lockAcquire("nodedirect:lock:{l}", "nodedirect:lock:{l}:fence", `t${i}`, 10_000);
      if (ok !== 1) throw new Error("not acquired");
      if ((await redis.lockRelease("nodedirect:lock:{l}", `t${i}`, "nodedirect:released", "lock:l")) !== 1) throw new Error("not released");
    },
  },
  "rate-limit check": { direct: () => redis.gcra("nodedirect:rl:{bench:k}", "0.001000", 1_000_000_000, 1, "0") },
};
const clients = [];
for (const [via, options] of [["client tcp", { url: args.url }], ["client uds", { url: args.url, socket: args.socket }]]) {
  const c = new Client(options);
  clients.push(c);
  await c.set(`nodehit:${run}`, VALUE);
  await c.get(`nodehit:${run}`); // into the near cache
  ways["cache get (hit, near cache)"][via] = () => c.get(`nodehit:${run}`);
  ways["cache get (miss)"][via] = (i) => c.get(`nodemiss:${run}:${i}`);
  ways["lock acquire+release"][via] = async () => {
    const lease = await c.acquire(`node:${run}`, { ttlMs: 10_000 });
    if (!lease || !(await c.release(lease))) throw new Error("lock round trip failed");
  };
  ways["rate-limit check"][via] = async () => {
    if (!(await c.check("bench", `node:${run}`)).allowed) throw new Error("denied");
  };
}
// A job handed to a worker already waiting, and acked (completed): a
// reliable list (BLMOVE on a connection of its own, LREM), BullMQ, and the
// client's waiting claim then ack.
const handoff = "queue handoff (enqueue to acked)";
const blocking = new Redis(args.redis);
ways[handoff] = {
  direct: async (i) => {
    const taken = blocking.blmoveBuffer(`nodedirect:q:{${run}}`, `nodedirect:q:{${run}}:working`, "RIGHT", "LEFT", 1);
    await redis.lpush(`nodedirect:q:{${run}}`, `j${i}`);
    const job = await taken;
    if (!job || (await redis.lrem(`nodedirect:q:{${run}}:working`, 1, job)) !== 1) throw new Error("no job");
  },
};
const bull = { connection: { url: args.redis, maxRetriesPerRequest: null }, prefix: `nodebull${run}` };
const bullQueue = new Queue("bench", bull);
const completed = new Map();
const bullWorker = new Worker("bench", async () => {}, { ...bull, concurrency: 1 });
bullWorker.on("completed", (job) => {
  completed.get(job.data.i)?.();
  completed.delete(job.data.i);
});
await bullWorker.waitUntilReady();
ways[handoff].bullmq = async (i) => {
  const done = new Promise((resolve) => completed.set(i, resolve));
  await bullQueue.add("j", { i }, { removeOnComplete: true });
  await done;
};
for (const [i, c] of clients.entries()) {
  const queue = `nodeq:${run}:${i}`;
  ways[handoff][i === 0 ? "client tcp" : "client uds"] = async (n) => {
    const taken = c.claim(queue, { waitMs: 1_000 });
    await c.enqueue(queue, `j${n}`);
    const [job] = await taken;
    if (!job) throw new Error("no job");
    await c.ack(job);
  };
}
for (const [op, byWay] of Object.entries(ways)) {
  let direct;
  for (const [via, fn] of Object.entries(byWay)) {
    const samples = await measure(Number(args.seconds), fn);
    const row = { client: "node", op, via, requests: samples.length, p50_us: quantile(samples, 0.5), p99_us: quantile(samples, 0.99) };
    if (!direct) direct = row;
    else Object.assign(row, { p50_ratio: row.p50_us / direct.p50_us, p99_ratio: row.p99_us / direct.p99_us });
    console.log(JSON.stringify(row));
  }
}
for (const c of clients) c.close();
await bullWorker.close();
await bullQueue.close();
blocking.disconnect();
redis.disconnect();
