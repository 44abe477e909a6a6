/** The client: every primitive of the sidecar as promise-returning calls. */

import { AsyncLocalStorage } from "node:async_hooks";
import { Conflict, LockLost, OutriggerError, RateLimited, Unavailable } from "./errors.js";
import { Aborted, type Call, type Reply, resolveAddress, Transport } from "./transport.js";

export type Bytes = string | Uint8Array;

export interface ClientOptions {
  /** Default: `OUTRIGGER_URL`, else `http://127.0.0.1:7480`. */
  url?: string;
  /** The sidecar's Unix socket (the fast path). Default: `OUTRIGGER_SOCKET`. */
  socket?: string;
  /** Default: `OUTRIGGER_TOKEN`. */
  token?: string;
  /** Every call's bound. Default: 10,000 ms. */
  timeoutMs?: number;
  /** Sent as `x-outrigger-caller` (for plugins). */
  caller?: string;
  /** Sent as `x-outrigger-attr-<name>` (for plugins). */
  attributes?: Record<string, string>;
}

export interface Entry {
  value: Buffer;
  version: number;
  /** Remaining lifetime; undefined when it never expires. */
  ttlMs: number | undefined;
}

export interface Leased {
  /** `hit`, `stale` (another caller is refilling it) or `granted` (compute
   * and set it). */
  outcome: "hit" | "stale" | "granted";
  entry: Entry | undefined;
}

export interface Lease {
  name: string;
  token: string;
  /** Strictly increases with every acquisition of the lock. */
  fence: number;
}

export interface Decision {
  allowed: boolean;
  limit: number;
  remaining: number;
  resetAfterMs: number;
  /** When denied: until the same cost can be allowed. */
  retryAfterMs: number | undefined;
}

export interface Limit {
  algorithm: "gcra" | "sliding_window" | "fixed_window";
  limit: number;
  periodMs: number;
  burst?: number;
}

export interface Counter {
  value: number;
  exists: boolean;
  ttlMs: number | undefined;
}

/** What an enqueue did. */
export interface Enqueued {
  /** The job's id; null when buffered. */
  id: string | null;
  /** The dedup id was seen within its window: `id` is the first job's. */
  duplicate: boolean;
  /** Redis is down and the sidecar buffers enqueues: enqueued when it returns. */
  buffered: boolean;
}

/** A claimed job. Settle it with `ack`, `nack` or `extendJob` before `visibleAtMs`. */
export interface Job {
  queue: string;
  id: string;
  receipt: string;
  /** 1 on the first claim. */
  attempt: number;
  maxAttempts: number;
  payload: Buffer;
  dedupId?: string;
  enqueuedAtMs: number;
  visibleAtMs: number;
}

export interface QueueStats {
  ready: number;
  delayed: number;
  inFlight: number;
  dead: number;
  oldestReadyMs?: number;
}

export interface Field {
  value: Buffer;
  /** The map's version when the field was last written. */
  version: number;
  ttlMs: number | undefined;
}

export interface MapFields {
  /** 0 when the map does not exist. */
  version: number;
  ttlMs: number | undefined;
  fields: Map<string, Field>;
  nextCursor: string | undefined;
}

/** One change of an atomic map update. */
export type Change =
  | { op: "set"; field: string; value: Bytes; ttlMs?: number; if?: "absent" | "present" | { version: number } }
  | { op: "delete"; field: string }
  | { op: "incr"; field: string; by: number };

export interface Applied {
  version: number;
  /** Per change: null for a set, whether it existed for a delete, the new
   * value for an increment. */
  outcomes: (null | boolean | number)[];
}

export interface Member {
  member: string;
  metadata: unknown;
  ttlMs: number;
}

export interface Message {
  channel: string;
  payload: Buffer;
  /** A durable message's stream offset; undefined for live-only ones. */
  offset: string | undefined;
  headers: Record<string, string>;
}

/** A durable message as a channel's history holds it. */
export interface HistoryMessage {
  offset: string;
  payload: Buffer;
  headers: Record<string, string>;
  /** When it was published (ms since the epoch, the Redis clock). */
  publishedAtMs: number;
}

export interface History {
  /** The channel's epoch (undefined for a channel that does not exist):
   * pass it as `epoch` with `after` to subscribe after these messages. */
  epoch: string | undefined;
  messages: HistoryMessage[];
  /** Pass as `cursor` for the next page; undefined on the last one. */
  nextCursor: string | undefined;
}

/** Where a resumed subscription stands, before its replay. */
export interface Resumed {
  /** Nothing after the offset is missing. False when messages after it
   * were trimmed or expired, or it is of another epoch (the channel was
   * created again, Redis lost it or failed over): reload your state. */
  recovered: boolean;
  /** The channel's epoch now. */
  epoch: string;
  /** The first offset the replay delivers; undefined when it has none. */
  from: string | undefined;
}

const seg = encodeURIComponent;

function query(params: Record<string, string | number | boolean | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== false && v !== "") q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

function bytes(value: Bytes): Buffer {
  return typeof value === "string" ? Buffer.from(value, "utf8") : Buffer.from(value);
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), "utf8");
}

// biome-ignore lint/suspicious/noExplicitAny: JSON answers are read field by field
function parse(reply: Reply): any {
  return reply.body.length ? JSON.parse(reply.body.toString("utf8")) : null;
}

function entryOf(r: Reply): Entry {
  const ttl = r.headers["outrigger-ttl-ms"];
  return { value: r.body, version: Number(r.headers["outrigger-version"]), ttlMs: ttl === undefined ? undefined : Number(ttl) };
}

function condition(c: { ifAbsent?: boolean; ifPresent?: boolean; ifVersion?: number }): string | undefined {
  const given = [c.ifAbsent && "absent", c.ifPresent && "present", c.ifVersion !== undefined && `version:${c.ifVersion}`].filter(
    (x): x is string => typeof x === "string",
  );
  if (given.length > 1) throw new TypeError("give at most one of ifAbsent, ifPresent and ifVersion");
  return given[0];
}

// biome-ignore lint/suspicious/noExplicitAny: a decision as the API writes it
function decisionOf(d: any): Decision {
  return {
    allowed: Boolean(d.allowed),
    limit: d.limit,
    remaining: d.remaining,
    resetAfterMs: d.reset_after_ms,
    retryAfterMs: d.allowed ? undefined : d.retry_after_ms,
  };
}

// biome-ignore lint/suspicious/noExplicitAny: a field as the API writes it
function fieldOf(f: any): Field {
  const value = "value" in f ? Buffer.from(f.value, "utf8") : Buffer.from(f.value_base64, "base64");
  return { value, version: f.version, ttlMs: f.ttl_ms };
}

function mapFieldsOf(r: Reply): MapFields {
  const body = parse(r);
  const fields = new Map<string, Field>();
  for (const f of body.fields) fields.set(f.field, fieldOf(f));
  return { version: body.version, ttlMs: body.ttl_ms, fields, nextCursor: body.next_cursor ?? undefined };
}

function wireChange(c: Change): Record<string, unknown> {
  if (c.op !== "set") return { ...c };
  const data = bytes(c.value);
  const text = data.toString("utf8");
  const value = Buffer.from(text, "utf8").equals(data) ? { value: text } : { value_base64: data.toString("base64") };
  const out: Record<string, unknown> = { op: "set", field: c.field, ...value };
  if (c.ttlMs !== undefined) out.ttl_ms = c.ttlMs;
  if (c.if !== undefined) out.if = typeof c.if === "string" ? c.if : `version:${c.if.version}`;
  return out;
}

/** Server-Sent Events, a line at a time. */
class SseParser {
  #event = "message";
  #data: string[] = [];

  feed(raw: string): [string, string] | undefined {
    const line = raw.replace(/\r?\n$/, "");
    if (line === "") {
      if (this.#data.length === 0) {
        this.#event = "message";
        return undefined;
      }
      const out: [string, string] = [this.#event, this.#data.join("\n")];
      this.#event = "message";
      this.#data = [];
      return out;
    }
    if (line.startsWith(":")) return undefined;
    const at = line.indexOf(":");
    const name = at < 0 ? line : line.slice(0, at);
    let value = at < 0 ? "" : line.slice(at + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "event") this.#event = value;
    else if (name === "data") this.#data.push(value);
    return undefined;
  }
}

interface HeldState {
  name: string;
  lost: boolean;
  reported: boolean;
  why: string;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * The sidecar, over HTTP. Calls are bounded by `timeoutMs`; a call that may
 * be repeated is retried once on a kept-alive connection the sidecar had
 * closed. `close()` closes its connections.
 */
export class Client {
  readonly #t: Transport;
  readonly #held = new AsyncLocalStorage<HeldState>();

  constructor(options: ClientOptions = {}) {
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(options.attributes ?? {})) headers[`x-outrigger-attr-${k}`] = v;
    if (options.caller) headers["x-outrigger-caller"] = options.caller;
    this.#t = new Transport(resolveAddress(options.url, options.socket, options.token), options.timeoutMs ?? 10_000, headers);
  }

  close(): void {
    this.#t.close();
  }

  #call<T>(call: Call<T>): Promise<T> {
    const held = this.#held.getStore();
    if (held?.lost && !held.reported) {
      held.reported = true;
      return Promise.reject(new LockLost(`lock ${JSON.stringify(held.name)} was lost while held: ${held.why}`));
    }
    return this.#t.call(call);
  }

  // --- cache -----------------------------------------------------------

  /** The entry, or undefined on a miss. */
  get(key: string, options: { refreshTtl?: boolean } = {}): Promise<Entry | undefined> {
    return this.#call({
      method: "GET",
      path: `/v1/cache/${seg(key)}${query({ refresh_ttl: options.refreshTtl })}`,
      read: (r) => (r.status === 404 ? undefined : entryOf(r)),
      answers: [404],
      idempotent: !options.refreshTtl,
    });
  }

  /** Writes `value`; resolves to its version. A condition that does not hold
   * rejects with `PreconditionFailed`. */
  set(
    key: string,
    value: Bytes,
    options: { ttlMs?: number; tags?: string[]; ifAbsent?: boolean; ifPresent?: boolean; ifVersion?: number; staleMs?: number } = {},
  ): Promise<number> {
    const cond = condition(options);
    const q = query({ ttl_ms: options.ttlMs, tags: options.tags?.join(","), stale_ms: options.staleMs, if: cond });
    return this.#call({
      method: "PUT",
      path: `/v1/cache/${seg(key)}${q}`,
      read: (r) => Number(parse(r).version),
      body: bytes(value),
      contentType: "application/octet-stream",
      idempotent: cond === undefined,
    });
  }

  /** Resolves to whether the key existed. */
  delete(key: string): Promise<boolean> {
    return this.#call({
      method: "DELETE",
      path: `/v1/cache/${seg(key)}`,
      read: (r) => r.status !== 404 && Boolean(parse(r).deleted),
      answers: [404],
      idempotent: true,
    });
  }

  /** Deletes every key carrying one of `tags`, or matching the glob
   * `pattern`; resolves to how many. */
  invalidate(by: { tags: string[] } | { pattern: string }): Promise<number> {
    return this.#call({
      method: "POST",
      path: "/v1/cache/invalidate",
      read: (r) => Number(parse(r).deleted),
      body: json(by),
      contentType: "application/json",
      idempotent: true,
    });
  }

  /** The value, or the lease to compute it: one caller computes while the
   * others wait up to `waitMs`. */
  getOrLease(key: string, options: { leaseMs: number; waitMs?: number; acceptStale?: boolean }): Promise<Leased> {
    return this.#call({
      method: "POST",
      path: `/v1/cache/${seg(key)}/lease`,
      read: (r) => ({
        outcome: (r.headers["outrigger-lease"] ?? "hit") as Leased["outcome"],
        entry: r.status === 204 ? undefined : entryOf(r),
      }),
      body: json({ lease_ms: options.leaseMs, wait_ms: options.waitMs ?? 0, accept_stale: options.acceptStale ?? false }),
      contentType: "application/json",
    });
  }

  /** Every key matching `pattern`, a page at a time. */
  async *keys(pattern = "", options: { page?: number } = {}): AsyncGenerator<string> {
    let cursor = "";
    for (;;) {
      const page = await this.#call({
        method: "GET",
        path: `/v1/cache${query({ pattern, cursor, limit: options.page })}`,
        read: (r) => parse(r) as { keys: string[]; next_cursor: string | null },
        idempotent: true,
      });
      yield* page.keys;
      if (!page.next_cursor) return;
      cursor = page.next_cursor;
    }
  }

  /** `fn`, cached for `ttlMs`: under concurrent misses it runs once (the
   * caller holding the lease computes, the others wait for its value).
   * `key` maps the arguments to the cache key (default: `name` and the
   * arguments as JSON); values go through JSON unless told otherwise. */
  cached<A extends unknown[], R>(
    name: string,
    fn: (...args: A) => Promise<R>,
    options: {
      ttlMs: number;
      key?: (...args: A) => string;
      tags?: string[];
      leaseMs?: number;
      waitMs?: number;
      serialize?: (value: R) => Bytes;
      deserialize?: (data: Buffer) => R;
    },
  ): (...args: A) => Promise<R> {
    const key = options.key ?? ((...args: A) => `${name}:${JSON.stringify(args)}`);
    const serialize = options.serialize ?? ((v: R) => JSON.stringify(v));
    const deserialize = options.deserialize ?? ((d: Buffer) => JSON.parse(d.toString("utf8")) as R);
    return async (...args: A) => {
      const k = key(...args);
      let got: Leased;
      try {
        got = await this.getOrLease(k, { leaseMs: options.leaseMs ?? 30_000, waitMs: options.waitMs ?? 10_000 });
      } catch (err) {
        if (err instanceof Conflict) return fn(...args); // the lease holder never filled it in time
        throw err;
      }
      if (got.outcome !== "granted" && got.entry) return deserialize(got.entry.value);
      const value = await fn(...args);
      await this.set(k, serialize(value), { ttlMs: options.ttlMs, tags: options.tags ?? [] });
      return value;
    };
  }

  // --- locks and semaphores -------------------------------------------

  /** The lock for `ttlMs`, waiting up to `waitMs`; undefined if it stays
   * held. */
  acquire(name: string, options: { ttlMs: number; waitMs?: number }): Promise<Lease | undefined> {
    return this.#call({
      method: "POST",
      path: `/v1/locks/${seg(name)}/acquire`,
      read: (r) => {
        if (r.status === 409) return undefined;
        const b = parse(r);
        return { name, token: b.token, fence: b.fence };
      },
      body: json({ ttl_ms: options.ttlMs, wait_ms: options.waitMs ?? 0 }),
      contentType: "application/json",
      answers: [409],
    });
  }

  /** Resolves to whether the lease still held the lock. */
  release(lease: Lease): Promise<boolean> {
    return this.#t.call(this.#tokenCall(lease, "release", {}));
  }

  /** A new lease of `ttlMs` from now; false if it was lost. */
  extend(lease: Lease, ttlMs: number): Promise<boolean> {
    return this.#call(this.#tokenCall(lease, "extend", { ttl_ms: ttlMs }));
  }

  #tokenCall(lease: Lease, what: "release" | "extend", extra: Record<string, unknown>): Call<boolean> {
    return {
      method: "POST",
      path: `/v1/locks/${seg(lease.name)}/${what}`,
      read: (r) => r.status === 200 && Boolean(parse(r)[what === "release" ? "released" : "extended"]),
      body: json({ token: lease.token, ...extra }),
      contentType: "application/json",
      answers: [409],
      idempotent: true,
    };
  }

  /**
   * Runs `fn` holding the lock, extending it in the background; rejects
   * with `Conflict` if it stays held for `waitMs`. If the lease is lost
   * meanwhile, `lease.signal` aborts, `fn`'s next call through this client
   * rejects with `LockLost`, and so does `withLock` if nothing did.
   */
  async withLock<R>(
    name: string,
    options: { ttlMs?: number; waitMs?: number },
    fn: (lease: Lease & { signal: AbortSignal }) => Promise<R>,
  ): Promise<R> {
    const ttlMs = options.ttlMs ?? 10_000;
    const waitMs = options.waitMs ?? 10_000;
    const lease = await this.acquire(name, { ttlMs, waitMs });
    if (!lease) throw new Conflict(`lock ${JSON.stringify(name)} stayed held for ${waitMs} ms`, 409);
    const state: HeldState = { name, lost: false, reported: false, why: "" };
    const abort = new AbortController();
    let expires = Date.now() + ttlMs;
    const keeper = setInterval(async () => {
      if (state.lost) return;
      try {
        if (await this.#t.call(this.#tokenCall(lease, "extend", { ttl_ms: ttlMs }))) {
          expires = Date.now() + ttlMs;
          return;
        }
        state.why = "another holder has it (its lease ran out)";
        state.lost = true;
      } catch (err) {
        if (Date.now() < expires) return; // the lease may still run: next tick
        state.why = `it could not be extended before its lease ran out: ${String(err)}`;
        state.lost = true;
      }
      abort.abort(new LockLost(`lock ${JSON.stringify(name)} was lost while held: ${state.why}`));
    }, ttlMs / 3);
    try {
      const result = await this.#held.run(state, () => fn({ ...lease, signal: abort.signal }));
      if (state.lost && !state.reported) {
        state.reported = true;
        throw new LockLost(`lock ${JSON.stringify(name)} was lost while held: ${state.why}`);
      }
      return result;
    } finally {
      clearInterval(keeper);
      if (!state.lost) await this.release(lease).catch(() => false);
    }
  }

  /** One of `limit` permits for `ttlMs`: its token, or undefined. */
  acquirePermit(name: string, options: { limit: number; ttlMs: number; waitMs?: number }): Promise<string | undefined> {
    return this.#call({
      method: "POST",
      path: `/v1/semaphores/${seg(name)}/acquire`,
      read: (r) => (r.status === 409 ? undefined : String(parse(r).token)),
      body: json({ limit: options.limit, ttl_ms: options.ttlMs, wait_ms: options.waitMs ?? 0 }),
      contentType: "application/json",
      answers: [409],
    });
  }

  releasePermit(name: string, token: string): Promise<boolean> {
    return this.#call({
      method: "POST",
      path: `/v1/semaphores/${seg(name)}/release`,
      read: (r) => r.status === 200 && Boolean(parse(r).released),
      body: json({ token }),
      contentType: "application/json",
      answers: [409],
      idempotent: true,
    });
  }

  // --- rate limits ----------------------------------------------------

  /** Decides whether `cost` fits `policy` (or `limit`) for `key`, and takes
   * it if so. A denial is a decision (`allowed` false), not a rejection. */
  check(policy: string, key: string, options: { cost?: number; limit?: Limit } = {}): Promise<Decision> {
    return this.#decide(policy, key, options, "check");
  }

  /** What `check` would decide now, taking nothing. */
  peek(policy: string, key: string, options: { cost?: number; limit?: Limit } = {}): Promise<Decision> {
    return this.#decide(policy, key, options, "peek");
  }

  #decide(policy: string, key: string, options: { cost?: number; limit?: Limit }, what: "check" | "peek"): Promise<Decision> {
    const body: Record<string, unknown> = { key, cost: options.cost ?? 1 };
    const l = options.limit;
    if (l) body.inline = { algorithm: l.algorithm, limit: l.limit, period_ms: l.periodMs, burst: l.burst ?? 0 };
    return this.#call({
      method: "POST",
      path: `/v1/ratelimit/${seg(policy)}/${what}`,
      read: (r) => decisionOf(parse(r)),
      body: json(body),
      contentType: "application/json",
      answers: [429],
      idempotent: what === "peek",
    });
  }

  /** Forgets `key`'s state under `policy`: its whole limit is back. */
  resetLimit(policy: string, key: string): Promise<boolean> {
    return this.#call({
      method: "POST",
      path: `/v1/ratelimit/${seg(policy)}/reset`,
      read: (r) => Boolean(parse(r).existed),
      body: json({ key }),
      contentType: "application/json",
      idempotent: true,
    });
  }

  /** Several checks, all or none: every cost is taken only if each fits. */
  checkAll(checks: { policy: string; key: string; cost?: number }[]): Promise<Decision[]> {
    return this.#call({
      method: "POST",
      path: "/v1/ratelimit/check-all",
      // biome-ignore lint/suspicious/noExplicitAny: decisions as the API writes them
      read: (r) => (parse(r).decisions as any[]).map(decisionOf),
      body: json({ checks: checks.map((c) => ({ policy: c.policy, key: c.key, cost: c.cost ?? 1 })) }),
      contentType: "application/json",
      answers: [429],
    });
  }

  /** Checks `policy` for `key`, rejecting with `RateLimited` when denied. */
  async limit(policy: string, key: string, options: { cost?: number } = {}): Promise<Decision> {
    const d = await this.check(policy, key, options);
    if (!d.allowed) throw new RateLimited(`${policy} for ${JSON.stringify(key)}: rate limited`, d.retryAfterMs ?? 0);
    return d;
  }

  // --- counters -------------------------------------------------------

  incr(name: string, by = 1, options: { ttlMs?: number; min?: number; max?: number } = {}): Promise<Counter> {
    return this.#call({
      method: "POST",
      path: `/v1/counters/${seg(name)}/incr`,
      read: (r) => counterOf(parse(r)),
      body: json({ by, ttl_ms: options.ttlMs ?? 0, min: options.min, max: options.max }),
      contentType: "application/json",
    });
  }

  counter(name: string): Promise<Counter> {
    return this.#call({ method: "GET", path: `/v1/counters/${seg(name)}`, read: (r) => counterOf(parse(r)), idempotent: true });
  }

  resetCounter(name: string): Promise<boolean> {
    return this.#call({ method: "DELETE", path: `/v1/counters/${seg(name)}`, read: (r) => Boolean(parse(r).existed), idempotent: true });
  }

  // --- work queues ----------------------------------------------------

  /** Enqueues a job; with `dedupId`, a second enqueue within the window returns the first job's id. */
  enqueue(
    queue: string,
    payload: Bytes,
    options: { delayMs?: number; dueAtMs?: number; dedupId?: string; maxAttempts?: number; backoffMs?: number; backoffMaxMs?: number } = {},
  ): Promise<Enqueued> {
    const q = query({
      delay_ms: options.delayMs,
      due_at_ms: options.dueAtMs,
      dedup_id: options.dedupId,
      max_attempts: options.maxAttempts,
      backoff_ms: options.backoffMs,
      backoff_max_ms: options.backoffMaxMs,
    });
    return this.#call({
      method: "POST",
      path: `/v1/queues/${seg(queue)}/jobs${q}`,
      read: (r) => {
        const b = parse(r);
        return { id: b.id ?? null, duplicate: Boolean(b.duplicate), buffered: Boolean(b.buffered) };
      },
      body: bytes(payload),
      contentType: "application/octet-stream",
      // Retried with the same dedup id, a second send enqueues nothing.
      idempotent: options.dedupId !== undefined,
    });
  }

  /**
   * Claims up to `max` due jobs (1 by default), waiting up to `waitMs` for
   * one. Jobs in `ack` (finished, of this queue) are acked in the same
   * request, all or none: rejects with `Conflict` if one's claim ran out,
   * `NotFound` if one is gone, and then nothing is acked or claimed.
   */
  claim(
    queue: string,
    options: { max?: number; visibilityMs?: number; waitMs?: number; ack?: Job[] } = {},
  ): Promise<Job[]> {
    const ack = options.ack ?? [];
    if (ack.some((job) => job.queue !== queue)) {
      return Promise.reject(new TypeError(`ack holds jobs of another queue than ${JSON.stringify(queue)}`));
    }
    return this.#call({
      method: "POST",
      path: `/v1/queues/${seg(queue)}/claim`,
      read: (r) => (parse(r).jobs as unknown[]).map((j) => jobOf(queue, j)),
      body: json({
        max: options.max ?? 1,
        visibility_ms: options.visibilityMs,
        wait_ms: options.waitMs ?? 0,
        ack: ack.length ? ack.map((job) => ({ id: job.id, receipt: job.receipt })) : undefined,
      }),
      contentType: "application/json",
      timeoutMs: (options.waitMs ?? 0) + this.#t.timeoutMs,
    });
  }

  /** Done: the job is removed. Rejects with `Conflict` if the claim ran out meanwhile. */
  async ack(job: Job): Promise<void> {
    await this.#settle(job, "ack", {});
  }

  /** Failed: due again after its backoff (or `delayMs`), or dead once its attempts are spent. */
  async nack(job: Job, options: { error?: string; delayMs?: number } = {}): Promise<"retrying" | "dead"> {
    const b = await this.#settle(job, "nack", { error: options.error, delay_ms: options.delayMs });
    return b.outcome;
  }

  /** Still working: the claim runs out `visibilityMs` from now; returns when. */
  async extendJob(job: Job, visibilityMs?: number): Promise<number> {
    const b = await this.#settle(job, "extend", { visibility_ms: visibilityMs });
    job.visibleAtMs = Number(b.visible_at_ms);
    return job.visibleAtMs;
  }

  // biome-ignore lint/suspicious/noExplicitAny: a settle reply as the API writes it
  #settle(job: Job, how: string, body: Record<string, unknown>): Promise<any> {
    return this.#call({
      method: "POST",
      path: `/v1/queues/${seg(job.queue)}/jobs/${seg(job.id)}/${how}`,
      read: parse,
      body: json({ receipt: job.receipt, ...body }),
      contentType: "application/json",
    });
  }

  queueStats(queue: string): Promise<QueueStats> {
    return this.#call({
      method: "GET",
      path: `/v1/queues/${seg(queue)}`,
      read: (r) => {
        const b = parse(r);
        return { ready: b.ready, delayed: b.delayed, inFlight: b.in_flight, dead: b.dead, oldestReadyMs: b.oldest_ready_ms };
      },
      idempotent: true,
    });
  }

  /**
   * A worker loop: yields jobs as they are claimed, `batch` at a time,
   * waiting for more when none is due, until `signal` aborts. Settle each
   * job (`ack`, `nack`) before its claim runs out, or it is claimed again.
   *
   *     for await (const job of client.consume("mail")) { await send(job.payload); await client.ack(job); }
   */
  async *consume(
    queue: string,
    options: { batch?: number; visibilityMs?: number; waitMs?: number; signal?: AbortSignal } = {},
  ): AsyncGenerator<Job> {
    const waitMs = options.waitMs ?? 10_000;
    while (!options.signal?.aborted) {
      const jobs = await this.claim(queue, { max: options.batch ?? 1, visibilityMs: options.visibilityMs, waitMs });
      for (const job of jobs) yield job;
    }
  }

  // --- maps -----------------------------------------------------------

  /** The fields named (absent ones left out), or a first page of all. */
  mapGet(name: string, ...fields: string[]): Promise<MapFields> {
    const q = new URLSearchParams(fields.map((f) => ["field", f])).toString();
    return this.#call({ method: "GET", path: `/v1/maps/${seg(name)}${q ? `?${q}` : ""}`, read: mapFieldsOf, idempotent: true });
  }

  /** Every field of the map, a page at a time. */
  async *mapEntries(name: string, options: { page?: number } = {}): AsyncGenerator<[string, Field]> {
    let cursor = "";
    for (;;) {
      const page = await this.#call({
        method: "GET",
        path: `/v1/maps/${seg(name)}${query({ cursor, limit: options.page })}`,
        read: mapFieldsOf,
        idempotent: true,
      });
      yield* page.fields;
      if (!page.nextCursor) return;
      cursor = page.nextCursor;
    }
  }

  /** Applies every change atomically, or none (rejecting why). */
  mapUpdate(
    name: string,
    changes: Change[],
    options: { ifVersion?: number; ttlMs?: number; sliding?: boolean; persist?: boolean } = {},
  ): Promise<Applied> {
    return this.#call({
      method: "POST",
      path: `/v1/maps/${seg(name)}`,
      read: (r) => {
        const b = parse(r);
        return {
          version: b.version,
          outcomes: (b.outcomes as Record<string, unknown>[]).map((o) =>
            "existed" in o ? Boolean(o.existed) : "value" in o ? Number(o.value) : null,
          ),
        };
      },
      body: json({
        changes: changes.map(wireChange),
        if_version: options.ifVersion,
        ttl_ms: options.ttlMs,
        sliding: options.sliding,
        persist: options.persist,
      }),
      contentType: "application/json",
    });
  }

  /** Sets one field; resolves to the map's new version. */
  async mapSet(
    name: string,
    field: string,
    value: Bytes,
    options: { ttlMs?: number; if?: "absent" | "present" | { version: number } } = {},
  ): Promise<number> {
    return (await this.mapUpdate(name, [{ op: "set", field, value, ...options }])).version;
  }

  /** Adds `by` to a numeric field; resolves to its new value. */
  async mapIncr(name: string, field: string, by = 1): Promise<number> {
    return Number((await this.mapUpdate(name, [{ op: "incr", field, by }])).outcomes[0]);
  }

  /** Deletes fields (whether the first existed), or the whole map. */
  async mapDelete(name: string, ...fields: string[]): Promise<boolean> {
    if (fields.length === 0) {
      return this.#call({ method: "DELETE", path: `/v1/maps/${seg(name)}`, read: (r) => Boolean(parse(r).existed), idempotent: true });
    }
    const applied = await this.mapUpdate(
      name,
      fields.map((field) => ({ op: "delete", field })),
    );
    return Boolean(applied.outcomes[0]);
  }

  // --- presence and pub/sub ------------------------------------------

  /** Joins (or heartbeats); resolves to whether the member is new. */
  join(room: string, member: string, options: { metadata?: unknown; ttlMs?: number } = {}): Promise<boolean> {
    return this.#call({
      method: "PUT",
      path: `/v1/presence/${seg(room)}/${seg(member)}`,
      read: (r) => Boolean(parse(r).joined),
      body: json({ metadata: options.metadata ?? null, ttl_ms: options.ttlMs ?? 30_000 }),
      contentType: "application/json",
      idempotent: true,
    });
  }

  leave(room: string, member: string): Promise<boolean> {
    return this.#call({ method: "DELETE", path: `/v1/presence/${seg(room)}/${seg(member)}`, read: (r) => Boolean(parse(r).left), idempotent: true });
  }

  members(room: string, options: { cursor?: string; limit?: number } = {}): Promise<{ members: Member[]; nextCursor: string | undefined }> {
    return this.#call({
      method: "GET",
      path: `/v1/presence/${seg(room)}${query({ cursor: options.cursor, limit: options.limit })}`,
      read: (r) => {
        const b = parse(r);
        return {
          members: (b.members as { member: string; metadata: unknown; ttl_ms: number }[]).map((m) => ({
            member: m.member,
            metadata: m.metadata,
            ttlMs: m.ttl_ms,
          })),
          nextCursor: b.next_cursor ?? undefined,
        };
      },
      idempotent: true,
    });
  }

  rooms(member: string): Promise<string[]> {
    return this.#call({ method: "GET", path: `/v1/members/${seg(member)}/rooms`, read: (r) => parse(r).rooms as string[], idempotent: true });
  }

  /** Runs `fn` with the member in the room, heartbeating every third of
   * `ttlMs`; leaves at the end. */
  async present<R>(room: string, member: string, options: { metadata?: unknown; ttlMs?: number }, fn: () => Promise<R>): Promise<R> {
    const ttlMs = options.ttlMs ?? 30_000;
    await this.join(room, member, { ...options, ttlMs });
    const beat = setInterval(() => {
      this.join(room, member, { ...options, ttlMs }).catch(() => undefined); // the next beat retries
    }, ttlMs / 3);
    try {
      return await fn();
    } finally {
      clearInterval(beat);
      await this.leave(room, member).catch(() => false); // else the TTL takes it out
    }
  }

  /** Publishes; a durable message's offset is returned. With
   * `idempotencyKey`, a repeat on the channel within the sidecar's window
   * (5 minutes) resolves to the first one's offset and delivers nothing,
   * so the call is retried safely (once, on a dropped connection).
   * `maxLen` / `maxAgeMs` ask the channel to keep less than its retention
   * rule does. */
  publish(
    channel: string,
    payload: Bytes,
    options: { durable?: boolean; idempotencyKey?: string; maxLen?: number; maxAgeMs?: number } = {},
  ): Promise<string | undefined> {
    const { durable, idempotencyKey, maxLen, maxAgeMs } = options;
    return this.#call({
      method: "POST",
      path: `/v1/pubsub/${seg(channel)}${query({ durable, idempotency_key: idempotencyKey, max_len: maxLen, max_age_ms: maxAgeMs })}`,
      read: (r) => parse(r).offset ?? undefined,
      body: bytes(payload),
      contentType: "application/octet-stream",
      idempotent: options.idempotencyKey !== undefined,
    });
  }

  /** `for await (const msg of client.subscribe(channel))`: messages as they
   * come (`after`: durable messages after that offset first). A dropped
   * connection is reopened: with `durable` (the default) after the last
   * durable offset seen, so no durable message is missed or repeated
   * (live-only ones published meanwhile are), and the same when the sidecar
   * reports this subscriber fell behind (`lagged`); with `durable: false`,
   * live from the reconnection on. `onOpen` is called each time the sidecar
   * has subscribed (from then on everything published arrives). Every
   * resume (`after`, and each reopening after a durable offset) first calls
   * `onResumed`: whether nothing after the offset is missing, and the
   * channel's epoch, which the next reopening passes on. Ends when
   * `signal` aborts (at once, the connection closed) or the loop breaks. */
  async *subscribe(
    channel: string,
    options: {
      after?: string;
      /** The epoch `after` belongs to (from history or `onResumed`). */
      epoch?: string;
      durable?: boolean;
      signal?: AbortSignal;
      onOpen?: () => void;
      onResumed?: (resumed: Resumed) => void;
      /** Called when a resumed subscription has delivered every durable
       * message the channel held after its offset (with the last one's
       * offset): what follows was published afterwards. */
      onReplayed?: (offset: string | undefined) => void;
    } = {},
  ): AsyncGenerator<Message> {
    const { signal } = options;
    let last = options.after;
    let epoch = options.epoch;
    let backoff = 50;
    while (!signal?.aborted) {
      try {
        const parser = new SseParser();
        const path = `/v1/pubsub/${seg(channel)}${query({ from: last, epoch: last === undefined ? undefined : epoch })}`;
        for await (const line of this.#t.stream(path, { accept: "text/event-stream" }, signal, options.onOpen)) {
          const event = parser.feed(line);
          if (!event) continue;
          backoff = 50;
          const [kind, data] = event;
          const body = JSON.parse(data);
          if (kind === "message" && body.type === "message") {
            if (body.offset) last = body.offset;
            const payload = "payload" in body ? Buffer.from(body.payload, "utf8") : Buffer.from(body.payload_base64 ?? "", "base64");
            yield { channel: body.channel, payload, offset: body.offset ?? undefined, headers: body.headers ?? {} };
          } else if (kind === "resumed") {
            epoch = body.epoch;
            options.onResumed?.({ recovered: body.recovered, epoch: body.epoch, from: body.from ?? undefined });
          } else if (kind === "replayed") {
            options.onReplayed?.(body.offset ?? undefined);
          } else if (kind === "lagged" && options.durable !== false && last !== undefined) {
            break; // catch up from the stream, after the last offset seen
          } else if (kind === "error") {
            throw new OutriggerError(body.message ?? data);
          }
        }
      } catch (err) {
        if (err instanceof Aborted) return;
        if (!(err instanceof Unavailable)) throw err;
      }
      if (signal?.aborted) return;
      if (options.durable === false) last = undefined;
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 2_000);
    }
  }

  /** A durable channel's messages without subscribing: the `last` newest,
   * or a page (`limit`, default 100) of those between `from` and `to`
   * (both included), continued with the previous page's `nextCursor`.
   * Oldest first unless `order: "desc"`. */
  history(
    channel: string,
    options: { last?: number; from?: string; to?: string; order?: "asc" | "desc"; limit?: number; cursor?: string } = {},
  ): Promise<History> {
    return this.#call({
      method: "GET",
      path: `/v1/pubsub/${seg(channel)}/history${query(options)}`,
      read: (r) => {
        const body = parse(r);
        return {
          epoch: body.epoch ?? undefined,
          // biome-ignore lint/suspicious/noExplicitAny: a message as the API writes it
          messages: body.messages.map((m: any) => ({
            offset: m.offset,
            payload: "payload" in m ? Buffer.from(m.payload, "utf8") : Buffer.from(m.payload_base64, "base64"),
            headers: m.headers,
            publishedAtMs: m.published_at_ms,
          })),
          nextCursor: body.next_cursor ?? undefined,
        };
      },
      idempotent: true,
    });
  }

  /** Drops a durable channel's messages before `before` (that one stays);
   * resolves to how many. */
  trim(channel: string, before: string): Promise<number> {
    return this.#call({
      method: "DELETE",
      path: `/v1/pubsub/${seg(channel)}/history${query({ before })}`,
      read: (r) => parse(r).removed,
      idempotent: true,
    });
  }

  status(): Promise<Record<string, unknown>> {
    return this.#call({ method: "GET", path: "/v1/admin/status", read: (r) => parse(r), idempotent: true });
  }
}

// biome-ignore lint/suspicious/noExplicitAny: a job as the API writes it
function jobOf(queue: string, j: any): Job {
  return {
    queue,
    id: j.id,
    receipt: j.receipt,
    attempt: j.attempt,
    maxAttempts: j.max_attempts,
    payload: "payload" in j ? Buffer.from(j.payload, "utf8") : Buffer.from(j.payload_base64 ?? "", "base64"),
    dedupId: j.dedup_id,
    enqueuedAtMs: j.enqueued_at_ms,
    visibleAtMs: j.visible_at_ms,
  };
}

// biome-ignore lint/suspicious/noExplicitAny: a counter as the API writes it
function counterOf(b: any): Counter {
  return { value: b.value, exists: Boolean(b.exists), ttlMs: b.ttl_ms };
}
