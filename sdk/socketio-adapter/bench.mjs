// The adapter next to @socket.io/redis-adapter, in one run on one Redis: a
// broadcast to a room made on instance A reaching a client connected to
// instance B. Latency one packet at a time (p50/p99), then packets
// delivered per second with up to 256 in flight. Each instance of ours has
// its own sidecar (started here from --bin); all four Socket.IO servers and
// both clients share this process, so both adapters pay the same Node.
//
//   node bench.mjs --bin OUTRIGGER --redis REDIS_URL [--seconds S]
//
// Prints one JSON row per adapter. Uses the built adapter (dist/).

import { once } from "node:events";
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { createAdapter as redisAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";
import { io as connect } from "socket.io-client";
import { startSidecar } from "../client-node/test/live.mjs";
import { createAdapter } from "./dist/index.js";

const { values: args } = parseArgs({
  options: { bin: { type: "string" }, redis: { type: "string" }, seconds: { type: "string", default: "2" } },
});
const seconds = Number(args.seconds);
process.env.OUTRIGGER_BIN = args.bin;

async function server(adapter) {
  const io = new Server(createServer(), { adapter });
  io.httpServer.listen(0, "127.0.0.1");
  await once(io.httpServer, "listening");
  io.on("connection", (socket) => socket.join("room"));
  return io;
}

/** Instance A and instance B of one adapter, a client on B in the room. */
async function pair(makeAdapter) {
  const a = await server(makeAdapter());
  const b = await server(makeAdapter());
  const client = connect(`http://127.0.0.1:${b.httpServer.address().port}`, { transports: ["websocket"] });
  await once(client, "connect");
  // Until a broadcast from A gets through, the instances are not linked.
  for (let linked = false; !linked; ) {
    const got = once(client, "ready").then(() => true);
    a.to("room").emit("ready");
    linked = await Promise.race([got, new Promise((r) => setTimeout(() => r(false), 200))]);
  }
  return { a, b, client, close: () => Promise.all([client.close(), a.close(), b.close()]) };
}

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

async function latency({ a, client }) {
  let waiting;
  client.on("ping", (k) => {
    if (waiting?.k === k) waiting.resolve();
  });
  const one = (k) => {
    const got = new Promise((resolve) => {
      waiting = { k, resolve };
    });
    a.to("room").emit("ping", k);
    return got;
  };
  for (let k = 0; k < 50; k++) await one(k);
  const samples = [];
  const deadline = performance.now() + seconds * 1000;
  for (let k = 50; performance.now() < deadline; k++) {
    const start = process.hrtime.bigint();
    await one(k);
    samples.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  return samples.sort((x, y) => x - y);
}

async function throughput({ a, client }) {
  let sent = 0;
  let received = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  const done = new Promise((resolve, reject) => {
    const stuck = setTimeout(() => reject(new Error(`${sent - received} packets never arrived`)), seconds * 1000 + 10_000);
    const pump = () => {
      while (sent - received < 256 && performance.now() < end) a.to("room").emit("t", sent++);
    };
    client.on("t", () => {
      received++;
      if (performance.now() < end) pump();
      else if (received === sent) {
        clearTimeout(stuck);
        resolve();
      }
    });
    pump();
  });
  await done;
  return { delivered: received, perSecond: received / ((performance.now() - start) / 1000) };
}

const namespace = `sio-bench-${process.pid}`;
const sidecars = [await startSidecar({ redis: { url: args.redis }, env: { OUTRIGGER_NAMESPACE: namespace } }), await startSidecar({ redis: { url: args.redis }, env: { OUTRIGGER_NAMESPACE: namespace } })];
const redisClients = [];
const adapters = {
  "@socket.io/redis-adapter": async () => {
    const makers = [];
    for (let i = 0; i < 2; i++) {
      const pub = createClient({ url: args.redis });
      const sub = pub.duplicate();
      await Promise.all([pub.connect(), sub.connect()]);
      redisClients.push(pub, sub);
      makers.push(redisAdapter(pub, sub, { key: `sio-bench-redis-${process.pid}` }));
    }
    return makers;
  },
  "@outrigger/socket.io-adapter": async () => sidecars.map((s) => createAdapter({ url: s.url, socket: s.socket })),
};
try {
  for (const [adapter, makers] of Object.entries(adapters)) {
    const [first, second] = await makers();
    let n = 0;
    const linked = await pair(() => [first, second][n++]);
    const samples = await latency(linked);
    const { delivered, perSecond } = await throughput(linked);
    console.log(
      JSON.stringify({
        adapter,
        samples: samples.length,
        p50_us: quantile(samples, 0.5),
        p99_us: quantile(samples, 0.99),
        delivered,
        packets_per_s: perSecond,
      }),
    );
    await linked.close();
  }
} finally {
  await Promise.all(redisClients.map((c) => c.quit().catch(() => {})));
  await Promise.all(sidecars.map((s) => s.stop()));
}
