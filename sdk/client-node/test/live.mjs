// Live sidecars for the tests: real `outrigger` processes on the memory
// backend and on a real `redis-server`, on free ports, reached over TCP and
// the Unix socket. OUTRIGGER_BIN names the binary (default: the
// workspace's target/debug/outrigger).

import { spawn } from "node:child_process";
import { mkdtempSync, openSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

async function waitFor(what, ready, limitMs = 10_000) {
  const deadline = Date.now() + limitMs;
  while (Date.now() < deadline) {
    if (await ready()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what} not ready within ${limitMs} ms`);
}

/** A `redis-server` without persistence; `{ port }` starts one again where
 * a stopped one was. */
export async function startRedis({ port } = {}) {
  port = port ?? (await freePort());
  const proc = spawn("redis-server", ["--port", String(port), "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  await waitFor("redis-server", () => new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => s.write("PING\r\n"));
    s.on("data", (d) => { s.destroy(); resolve(d.toString().startsWith("+PONG")); });
    s.on("error", () => resolve(false));
  }));
  return { url: `redis://127.0.0.1:${port}`, port, stop: () => proc.kill("SIGKILL") };
}

export async function startSidecar({ redis, port, env = {} } = {}) {
  port = port ?? (await freePort());
  const dir = mkdtempSync(path.join(tmpdir(), "outrigger-node-"));
  const socket = path.join(dir, "http.sock");
  const full = {
    ...process.env,
    OUTRIGGER_HTTP__ADDR: `127.0.0.1:${port}`,
    OUTRIGGER_HTTP__SOCKET: socket,
    OUTRIGGER_GRPC__ADDR: "127.0.0.1:0",
    OUTRIGGER_NAMESPACE: `node${port}`,
    OUTRIGGER_RATELIMIT__POLICIES__LOGIN__ALGORITHM: "gcra",
    OUTRIGGER_RATELIMIT__POLICIES__LOGIN__LIMIT: "5",
    OUTRIGGER_RATELIMIT__POLICIES__LOGIN__PERIOD: "1m",
    OUTRIGGER_RATELIMIT__POLICIES__IP__ALGORITHM: "fixed_window",
    OUTRIGGER_RATELIMIT__POLICIES__IP__LIMIT: "2",
    OUTRIGGER_RATELIMIT__POLICIES__IP__PERIOD: "1m",
    ...env,
  };
  for (const k of ["OUTRIGGER_URL", "OUTRIGGER_SOCKET", "OUTRIGGER_TOKEN"]) delete full[k];
  if (redis) full.OUTRIGGER_REDIS__URL = redis.url;
  const log = openSync(path.join(dir, "sidecar.log"), "w");
  const bin = process.env.OUTRIGGER_BIN || path.join(root, "target/debug/outrigger");
  const proc = spawn(bin, ["serve"], { env: full, stdio: ["ignore", log, log] });
  const url = `http://127.0.0.1:${port}`;
  await waitFor("the sidecar", async () => {
    if (proc.exitCode !== null) throw new Error(`the sidecar exited (${proc.exitCode}), log in ${dir}`);
    try {
      return (await fetch(`${url}/readyz`)).status === 200;
    } catch {
      return false;
    }
  });
  const stop = () => new Promise((resolve) => {
    if (proc.exitCode !== null) return resolve();
    proc.once("exit", resolve);
    proc.kill("SIGTERM");
  });
  return {
    url, socket, stop,
    restart: async () => { await stop(); return startSidecar({ redis, port, env: { OUTRIGGER_HTTP__SOCKET: socket } }); },
  };
}

let counter = 0;
export function unique(name) {
  return `${name.replace(/[^A-Za-z0-9]/g, "-")}-${process.pid}-${++counter}`;
}
