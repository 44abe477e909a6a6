/** Bytes to and from the sidecar: HTTP/1.1 with kept-alive connections over
 * TCP or the sidecar's Unix socket (the fast path), on `node:http` alone. */

import http from "node:http";
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
}

function headersOf(res: http.IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) {
    if (typeof v === "string") out[k] = v;
    else if (Array.isArray(v)) out[k] = v.join(", ");
  }
  return out;
}

export class Transport {
  readonly #agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  readonly #headers: Record<string, string>;

  constructor(
    readonly address: Address,
    readonly timeoutMs: number,
    headers: Record<string, string>,
  ) {
    this.#headers = { ...headers };
    if (address.token) this.#headers.authorization = `Bearer ${address.token}`;
  }

  describe(): string {
    return this.address.socketPath ?? `${this.address.host}:${this.address.port}`;
  }

  close(): void {
    this.#agent.destroy();
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
      if (err instanceof Retryable && call.idempotent) return await this.#once(call);
      if (err instanceof Retryable) throw this.#unreachable(err.cause);
      throw err;
    }
  }

  #options(method: string, path: string, extra: Record<string, string>): http.RequestOptions {
    const a = this.address;
    return {
      method,
      path,
      agent: this.#agent,
      headers: { ...this.#headers, ...extra },
      ...(a.socketPath ? { socketPath: a.socketPath } : { host: a.host, port: a.port }),
    };
  }

  #unreachable(err: unknown): Unavailable {
    return new Unavailable(`cannot reach the sidecar at ${this.describe()}: ${String(err)}`);
  }

  #once<T>(call: Call<T>): Promise<Reply> {
    const extra: Record<string, string> = {};
    if (call.contentType) extra["content-type"] = call.contentType;
    if (call.body) extra["content-length"] = String(call.body.length);
    return new Promise((resolve, reject) => {
      const req = http.request(this.#options(call.method, call.path, extra), (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: headersOf(res), body: Buffer.concat(chunks) }),
        );
        res.on("error", (err) => reject(this.#unreachable(err)));
      });
      req.setTimeout(this.timeoutMs, () => {
        req.destroy(new TimeoutError());
      });
      req.on("error", (err) => {
        if (err instanceof TimeoutError) {
          reject(new Unavailable(`the sidecar at ${this.describe()} did not answer within ${this.timeoutMs} ms`));
        } else if (req.reusedSocket && (err as NodeJS.ErrnoException).code === "ECONNRESET") {
          reject(new Retryable(err));
        } else {
          reject(this.#unreachable(err));
        }
      });
      req.end(call.body);
    });
  }

  /** The lines of a streaming answer, on a connection of its own (closed
   * when the iteration ends). A non-2xx answer rejects. Reads wait out the
   * sidecar's keep-alive comments (every 15 s); a connection silent for
   * three of them is dead. */
  async *stream(path: string, headers: Record<string, string>): AsyncGenerator<string> {
    const silentMs = Math.max(this.timeoutMs, 45_000);
    const options = { ...this.#options("GET", path, headers), agent: false as const };
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = http.request(options, resolve);
      req.setTimeout(this.timeoutMs, () => req.destroy(new TimeoutError()));
      req.on("error", (err) => reject(this.#unreachable(err)));
      req.end();
    });
    try {
      if (res.statusCode !== 200) {
        const chunks: Buffer[] = [];
        for await (const c of res) chunks.push(c as Buffer);
        throw errorFrom(res.statusCode ?? 0, headersOf(res), Buffer.concat(chunks));
      }
      res.socket.setTimeout(silentMs, () => res.destroy(new TimeoutError()));
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
        throw new Unavailable(`the stream from ${this.describe()} broke: ${String(err)}`);
      }
      throw new Unavailable(`the sidecar at ${this.describe()} ended the stream`);
    } finally {
      res.destroy();
    }
  }
}

class TimeoutError extends Error {}

class Retryable extends Error {
  constructor(override readonly cause: unknown) {
    super(String(cause));
  }
}
