/** Bytes to and from the sidecar: HTTP/1.1 with kept-alive connections over
 * TCP or the sidecar's Unix socket (the fast path), on `node:http` alone. */

import http from "node:http";
import net from "node:net";
import { errorFrom, Unavailable } from "./errors.js";

/** Where the sidecar is, from options or the environment. */
export interface Address {
  host: string;
  port: number;
  socketPath: string | undefined;
  token: string | undefined;
}

export const DEFAULT_URL = "http://127.0.0.1:7480";

export function resolveAddress(url?: string, socket?: string, token?: string): Address {
  const raw = url ?? process.env.OUTRIGGER_URL ?? DEFAULT_URL;
  const parsed = new URL(raw);
  if (parsed.protocol !== "http:") throw new TypeError(`sidecar URL ${raw}: expected http://host:port`);
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 80),
    socketPath: socket ?? (process.env.OUTRIGGER_SOCKET || undefined),
    token: token ?? (process.env.OUTRIGGER_TOKEN || undefined),
  };
}

/** An HTTP answer: status, headers (lower-case names) and body. */
export interface Reply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** One request and how to read its answer. */
export interface Call<T> {
  method: string;
  path: string;
  read: (reply: Reply) => T;
  body?: Buffer | undefined;
  contentType?: string | undefined;
  /** Statuses `read` handles itself; any other non-2xx rejects. */
  answers?: number[];
  /** Whether sending it twice is harmless (retried once on a dropped
   * kept-alive connection). */
  idempotent?: boolean;
  /** This call's bound, when it waits on the sidecar's side (a claim's
   * `wait_ms`): the client's `timeoutMs` by default. */
  timeoutMs?: number;
}

function headersOf(res: http.IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) {
    if (typeof v === "string") out[k] = v;
    else if (Array.isArray(v)) out[k] = v.join(", ");
  }
  return out;
}

/** A stream ended by its caller's `AbortSignal`. */
export class Aborted extends Error {}

/** Connections kept open for reuse, at most. */
const MAX_IDLE = 16;

/** One kept-alive connection, speaking just enough HTTP/1.1 for the
 * sidecar's answers (a length, or chunks, or none): node:http's machinery
 * costs more than the sidecar's whole near-cache hit. */
class RawConn {
  readonly #socket: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #pending: { resolve: (r: { reply: Reply; keep: boolean }) => void; reject: (err: unknown) => void } | undefined;
  #dead: unknown;

  constructor(address: Address) {
    this.#socket = address.socketPath ? net.connect(address.socketPath) : net.connect(address.port, address.host);
    this.#socket.setNoDelay(true);
    this.#socket.on("data", (chunk: Buffer) => {
      this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
      this.#parse();
    });
    const fail = (err: unknown) => {
      this.#dead ??= err;
      this.#pending?.reject(err);
      this.#pending = undefined;
    };
    this.#socket.on("error", fail);
    this.#socket.on("close", () => fail(new Error("the sidecar closed the connection")));
  }

  close(): void {
    this.#socket.destroy();
  }

  /** When the exchange in flight must have been answered (ms since the
   * epoch); checked by the transport's sweeper, so no request pays for a
   * timer of its own. */
  deadline = Number.POSITIVE_INFINITY;

  exchange(request: Buffer, timeoutMs: number): Promise<{ reply: Reply; keep: boolean }> {
    if (this.#dead) return Promise.reject(new NotSent(this.#dead));
    return new Promise((resolve, reject) => {
      this.deadline = Date.now() + timeoutMs;
      this.#pending = { resolve, reject };
      this.#socket.write(request);
    });
  }

  /** Fails the exchange in flight if its deadline has passed. */
  expire(now: number): void {
    if (this.#pending && now >= this.deadline) {
      const pending = this.#pending;
      this.#pending = undefined;
      this.#dead = new TimeoutError();
      pending.reject(this.#dead);
    }
  }

  #parse(): void {
    const end = this.#buf.indexOf("\r\n\r\n");
    if (end < 0 || !this.#pending) return;
    const lines = this.#buf.subarray(0, end).toString("latin1").split("\r\n");
    const status = Number(lines[0]?.split(" ")[1]);
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const at = line.indexOf(":");
      if (at > 0) headers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
    }
    const start = end + 4;
    let body: Buffer;
    let used: number;
    if (status === 204 || status === 304 || (status >= 100 && status < 200)) {
      body = Buffer.alloc(0);
      used = start;
    } else if (headers["transfer-encoding"]?.toLowerCase() === "chunked") {
      const chunks: Buffer[] = [];
      let at = start;
      for (;;) {
        const lineEnd = this.#buf.indexOf("\r\n", at);
        if (lineEnd < 0) return;
        const size = Number.parseInt(this.#buf.subarray(at, lineEnd).toString("latin1"), 16);
        if (size === 0) {
          if (this.#buf.length < lineEnd + 4) return;
          used = lineEnd + 4;
          break;
        }
        if (this.#buf.length < lineEnd + 2 + size + 2) return;
        chunks.push(this.#buf.subarray(lineEnd + 2, lineEnd + 2 + size));
        at = lineEnd + 2 + size + 2;
      }
      body = Buffer.concat(chunks);
    } else {
      const length = Number(headers["content-length"] ?? 0);
      if (this.#buf.length < start + length) return;
      body = Buffer.from(this.#buf.subarray(start, start + length));
      used = start + length;
    }
    this.#buf = this.#buf.subarray(used);
    const pending = this.#pending;
    this.#pending = undefined;
    this.deadline = Number.POSITIVE_INFINITY;
    pending.resolve({ reply: { status, headers, body }, keep: headers.connection?.toLowerCase() !== "close" });
  }
}

export class Transport {
  readonly #idle: RawConn[] = [];
  readonly #busy = new Set<RawConn>();
  #sweeper: NodeJS.Timeout | undefined;
  /** After `close`: connections are closed once their exchange is over. */
  #closed = false;
  readonly #headers: Record<string, string>;
  readonly #fixed: string;

  constructor(
    readonly address: Address,
    readonly timeoutMs: number,
    headers: Record<string, string>,
  ) {
    this.#headers = { ...headers };
    if (address.token) this.#headers.authorization = `Bearer ${address.token}`;
    const host = address.socketPath ? "localhost" : `${address.host}:${address.port}`;
    this.#fixed = Object.entries({ host, ...this.#headers })
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join("");
  }

  describe(): string {
    return this.address.socketPath ?? `${this.address.host}:${this.address.port}`;
  }

  /** Closes the idle connections; calls in flight finish (within their
   * deadline) and close theirs, so nothing is left open. */
  close(): void {
    this.#closed = true;
    for (const conn of this.#idle.splice(0)) conn.close();
  }

  /** Expires overdue exchanges, a few times per timeout; runs only while
   * something is in flight. */
  #sweep(): void {
    if (this.#sweeper) return;
    const every = Math.max(5, Math.min(100, this.timeoutMs / 4));
    this.#sweeper = setInterval(() => {
      const now = Date.now();
      for (const conn of this.#busy) conn.expire(now);
      if (this.#busy.size === 0) {
        clearInterval(this.#sweeper);
        this.#sweeper = undefined;
      }
    }, every);
    this.#sweeper.unref();
  }

  async call<T>(call: Call<T>): Promise<T> {
    const reply = await this.send(call);
    if ((reply.status >= 200 && reply.status < 300) || call.answers?.includes(reply.status)) {
      return call.read(reply);
    }
    throw errorFrom(reply.status, reply.headers, reply.body);
  }

  async send<T>(call: Call<T>): Promise<Reply> {
    try {
      return await this.#once(call);
    } catch (err) {
      // A kept-alive connection the sidecar closed meanwhile: one more try
      // on a fresh one, when the call may be repeated.
      if (err instanceof Retryable && (call.idempotent || err.cause instanceof NotSent)) return await this.#once(call);
      if (err instanceof Retryable) throw this.#unreachable(err.cause);
      throw err;
    }
  }

  #options(method: string, path: string, extra: Record<string, string>): http.RequestOptions {
    const a = this.address;
    return {
      method,
      path,
      headers: { ...this.#headers, ...extra },
      ...(a.socketPath ? { socketPath: a.socketPath } : { host: a.host, port: a.port }),
    };
  }

  #unreachable(err: unknown): Unavailable {
    return new Unavailable(`cannot reach the sidecar at ${this.describe()}: ${String(err)}`);
  }

  #once<T>(call: Call<T>): Promise<Reply> {
    let head = `${call.method} ${call.path} HTTP/1.1\r\n${this.#fixed}`;
    if (call.contentType) head += `content-type: ${call.contentType}\r\n`;
    if (call.body || call.method === "POST" || call.method === "PUT") head += `content-length: ${call.body?.length ?? 0}\r\n`;
    const request = call.body ? Buffer.concat([Buffer.from(`${head}\r\n`, "latin1"), call.body]) : Buffer.from(`${head}\r\n`, "latin1");
    const reused = this.#idle.length > 0;
    const conn = this.#idle.pop() ?? new RawConn(this.address);
    this.#busy.add(conn);
    this.#sweep();
    const timeoutMs = call.timeoutMs ?? this.timeoutMs;
    return conn.exchange(request, timeoutMs).then(
      ({ reply, keep }) => {
        this.#busy.delete(conn);
        if (keep && !this.#closed && this.#idle.length < MAX_IDLE) this.#idle.push(conn);
        else conn.close();
        return reply;
      },
      (err: unknown) => {
        this.#busy.delete(conn);
        conn.close();
        if (err instanceof TimeoutError) {
          throw new Unavailable(`the sidecar at ${this.describe()} did not answer within ${timeoutMs} ms`);
        }
        // A kept-alive connection the sidecar closed meanwhile.
        if (reused) throw new Retryable(err);
        throw this.#unreachable(err);
      },
    );
  }

  /** The lines of a streaming answer, on a connection of its own (closed
   * when the iteration ends or `signal` aborts; `onOpen` is called on a 2xx
   * answer's head). A non-2xx answer rejects. Reads wait out the
   * sidecar's keep-alive comments (every 15 s); a connection silent for
   * three of them is dead. */
  async *stream(path: string, headers: Record<string, string>, signal?: AbortSignal, onOpen?: () => void): AsyncGenerator<string> {
    const silentMs = Math.max(this.timeoutMs, 45_000);
    const options = { ...this.#options("GET", path, headers), agent: false as const, signal };
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = http.request(options, resolve);
      req.setTimeout(this.timeoutMs, () => req.destroy(new TimeoutError()));
      req.on("error", (err) => reject(signal?.aborted ? new Aborted() : this.#unreachable(err)));
      req.end();
    });
    try {
      if (res.statusCode !== 200) {
        const chunks: Buffer[] = [];
        for await (const c of res) chunks.push(c as Buffer);
        throw errorFrom(res.statusCode ?? 0, headersOf(res), Buffer.concat(chunks));
      }
      res.socket.setTimeout(silentMs, () => res.destroy(new TimeoutError()));
      onOpen?.();
      let pending = "";
      try {
        for await (const chunk of res) {
          pending += (chunk as Buffer).toString("utf8");
          let at = pending.indexOf("\n");
          while (at >= 0) {
            yield pending.slice(0, at + 1);
            pending = pending.slice(at + 1);
            at = pending.indexOf("\n");
          }
        }
      } catch (err) {
        if (signal?.aborted) throw new Aborted();
        throw new Unavailable(`the stream from ${this.describe()} broke: ${String(err)}`);
      }
      throw new Unavailable(`the sidecar at ${this.describe()} ended the stream`);
    } finally {
      res.destroy();
    }
  }
}

class TimeoutError extends Error {}

/** The connection was gone before the request was written. */
class NotSent extends Error {
  constructor(override readonly cause: unknown) {
    super(String(cause));
  }
}

class Retryable extends Error {
  constructor(override readonly cause: unknown) {
    super(String(cause));
  }
}
