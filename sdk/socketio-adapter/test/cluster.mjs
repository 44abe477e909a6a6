// A Socket.IO cluster for the tests: real Socket.IO servers, each with the
// adapter on its own real sidecar, all on one real redis-server, and
// socket.io-client connections that record what they receive.

import { once } from "node:events";
import { createServer } from "node:http";
import net from "node:net";
import { Server } from "socket.io";
import { io as connect } from "socket.io-client";
import { createAdapter } from "../dist/index.js";

export { freePort, startRedis, startSidecar } from "../../client-node/test/live.mjs";

export const HEARTBEAT = { heartbeatInterval: 200, heartbeatTimeout: 2_000 };

/** Polls `ready` every 20 ms for up to `limitMs`. */
export async function waitFor(what, ready, limitMs = 10_000) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const value = await ready();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A Socket.IO server on the sidecar at `sidecarUrl`, with connection state
 * recovery; its clients can ask to join rooms (`join`, acknowledged) and
 * answer `question`s with `answer:<name>`. */
export async function startServer(sidecarUrl, { recovery = 10_000, ...options } = {}) {
  const http = createServer();
  const io = new Server(http, {
    adapter: createAdapter({ url: sidecarUrl, ...HEARTBEAT, ...options }),
    connectionStateRecovery: { maxDisconnectionDuration: recovery, skipMiddlewares: true },
  });
  io.on("connection", (socket) => {
    socket.data.name = socket.handshake.auth.name;
    socket.on("join", (room, ack) => {
      socket.join(room);
      ack();
    });
  });
  http.listen(0, "127.0.0.1");
  await once(http, "listening");
  return { io, url: `http://127.0.0.1:${http.address().port}`, adapter: () => io.of("/").adapter };
}

/** Waits until every server counts `n` servers in the cluster. */
export function clustered(servers, n = servers.length) {
  return waitFor(`${n} servers see each other`, async () => {
    const counts = await Promise.all(servers.map((s) => s.adapter().serverCount()));
    return counts.every((c) => c === n);
  });
}

/** A client of `url` named `name` (the server's `socket.data.name`) that
 * records every `msg` event as it comes. */
export async function startClient(url, name, options = {}) {
  const socket = connect(url, { transports: ["websocket"], auth: { name }, reconnectionDelay: 50, ...options });
  const got = [];
  socket.on("msg", (...args) => got.push(args));
  socket.on("question", (...args) => args.at(-1)(`answer:${name}`));
  await once(socket, "connect");
  return { socket, got, name, join: (room) => socket.timeout(5_000).emitWithAck("join", room) };
}

/** A TCP load balancer in front of the servers: new connections go to the
 * current target, `point(url)` changes it, `cut()` drops every connection. */
export async function startBalancer(url) {
  let target = new URL(url);
  const open = new Set();
  const server = net.createServer((inbound) => {
    const outbound = net.connect(Number(target.port), target.hostname);
    open.add(inbound);
    inbound.pipe(outbound).pipe(inbound);
    const drop = () => {
      open.delete(inbound);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on("error", drop).on("close", drop);
    outbound.on("error", drop).on("close", drop);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    point: (next) => {
      target = new URL(next);
    },
    cut: () => {
      for (const s of open) s.destroy();
    },
    close: () => {
      for (const s of open) s.destroy();
      server.close();
    },
  };
}
