/** The adapter: Socket.IO's cluster adapter (with heartbeats) carried by the
 * sidecar's pub/sub, and connection state recovery from its durable
 * channels and cache. */

import { decode, encode } from "@msgpack/msgpack";
import { Client, type ClientOptions, type Message } from "@outrigger/client";
import {
  Adapter,
  type BroadcastOptions,
  type ClusterAdapterOptions,
  ClusterAdapterWithHeartbeat,
  type ClusterMessage,
  type ClusterResponse,
  MessageType,
  type PrivateSessionId,
  type Session,
} from "socket.io-adapter";
import { Lane } from "./lane.js";
import { comparePlaces, decodeBatch, joinBatch, type Place, parsePlace, streamOffsetBefore } from "./wire.js";

export interface AdapterOptions extends ClusterAdapterOptions, ClientOptions {
  /** A client to share; default: one made from the `ClientOptions` here (or
   * the `OUTRIGGER_*` environment), closed with the last namespace. */
  client?: Client;
  /** Prefix of the channels and of the session keys. Default `socket.io`. */
  prefix?: string;
  /** The most bytes one published batch holds (more waits for the next).
   * Default 256 KiB, well under the sidecar's `limits.max_value_bytes`. */
  maxBatchBytes?: number;
  /** The bound on reading a reconnecting client's missed packets. Default
   * 5,000 ms; past it the client gets a fresh session. */
  restoreTimeoutMs?: number;
}

/** What this namespace's adapter has seen on its channels. */
export interface AdapterStats {
  /** Batches published. */
  published: number;
  /** Messages received from other instances. */
  received: number;
  /** Payloads on the channels that are not this adapter's batches. */
  foreign: number;
  /** Messages in a batch that could not be handled (bad shape or data). */
  malformed: number;
}

/** Messages without `data`. */
const NO_DATA = new Set<number>([MessageType.INITIAL_HEARTBEAT, MessageType.HEARTBEAT, MessageType.ADAPTER_CLOSE]);
const RESPONSES = new Set<number>([
  MessageType.FETCH_SOCKETS_RESPONSE,
  MessageType.SERVER_SIDE_EMIT_RESPONSE,
  MessageType.BROADCAST_CLIENT_COUNT,
  MessageType.BROADCAST_ACK,
]);

/** A packet event as Socket.IO broadcasts it. */
interface BroadcastData {
  packet: { type: number; data: unknown[]; id?: number };
  opts: { rooms: string[]; except: string[]; flags?: { volatile?: boolean } };
  requestId?: string;
}

/** A broadcast kept for the reconnection seam (see `restoreSession`). */
interface Recent {
  place: Place;
  at: number;
  rooms: string[];
  except: string[];
  data: unknown[];
}

/** A pause that does not keep the process alive. */
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Whether a broadcast can be replayed to a reconnecting client: an event
 * without acknowledgement, not volatile (what Socket.IO gives offsets to). */
function recoverable(data: BroadcastData): boolean {
  return data.requestId === undefined && data.packet.type === 2 && data.packet.id === undefined && !data.opts.flags?.volatile;
}

/** Whether a session in `rooms` would have received a broadcast. */
function reaches(rooms: string[], target: { rooms: string[]; except: string[] }): boolean {
  const included = target.rooms.length === 0 || rooms.some((r) => target.rooms.includes(r));
  return included && rooms.every((r) => !target.except.includes(r));
}

function validOpts(opts: unknown): boolean {
  return isRecord(opts) && Array.isArray(opts.rooms) && Array.isArray(opts.except) && (opts.flags === undefined || isRecord(opts.flags));
}

/** The shape every handled message must have (the base class trusts it). */
function wellFormed(m: unknown): m is ClusterMessage | ClusterResponse {
  if (!isRecord(m) || typeof m.uid !== "string" || typeof m.nsp !== "string" || typeof m.type !== "number") return false;
  if (NO_DATA.has(m.type)) return true;
  const data = m.data;
  if (!isRecord(data)) return false;
  switch (m.type) {
    case MessageType.BROADCAST: {
      const packet = data.packet;
      return isRecord(packet) && typeof packet.type === "number" && Array.isArray(packet.data) && validOpts(data.opts);
    }
    case MessageType.SOCKETS_JOIN:
    case MessageType.SOCKETS_LEAVE:
      return validOpts(data.opts) && Array.isArray(data.rooms);
    case MessageType.DISCONNECT_SOCKETS:
      return validOpts(data.opts);
    case MessageType.FETCH_SOCKETS:
      return validOpts(data.opts) && typeof data.requestId === "string";
    case MessageType.SERVER_SIDE_EMIT:
      return Array.isArray(data.packet);
    case MessageType.FETCH_SOCKETS_RESPONSE:
      return typeof data.requestId === "string" && Array.isArray(data.sockets);
    case MessageType.BROADCAST_CLIENT_COUNT:
      return typeof data.requestId === "string" && typeof data.clientCount === "number";
    case MessageType.SERVER_SIDE_EMIT_RESPONSE:
    case MessageType.BROADCAST_ACK:
      return typeof data.requestId === "string";
    default:
      return false; // a type this version does not know
  }
}

/** One instance's adapter for one Socket.IO namespace. */
export class OutriggerAdapter extends ClusterAdapterWithHeartbeat {
  readonly stats: AdapterStats = { published: 0, received: 0, foreign: 0, malformed: 0 };
  readonly #client: Client;
  readonly #release: () => void;
  readonly #channel: string;
  readonly #sessionPrefix: string;
  readonly #restoreTimeoutMs: number;
  readonly #lane: Lane;
  readonly #responseLanes = new Map<string, Lane>();
  readonly #maxBatchBytes: number;
  readonly #closed = new AbortController();
  /** Set by `close`: nothing but the farewell is published from then on
   * (so no heartbeat timer is armed again after it was cleared). */
  #closing = false;
  #starting: Promise<void> = Promise.resolve();
  /** Broadcasts dispatched lately, when connection state recovery is on. */
  readonly #recent: Recent[] = [];
  /** Dispatches held back while a restored socket is being set up. */
  #held: (() => void)[] | undefined;

  constructor(nsp: unknown, client: Client, release: () => void, options: AdapterOptions) {
    super(nsp, options);
    const prefix = options.prefix ?? "socket.io";
    this.#client = client;
    this.#release = release;
    this.#channel = `${prefix}#${this.nsp.name}#`;
    this.#sessionPrefix = `${prefix}#session#`;
    this.#restoreTimeoutMs = options.restoreTimeoutMs ?? 5_000;
    this.#maxBatchBytes = options.maxBatchBytes ?? 256 * 1024;
    // Everything on the namespace's channel is durable: a subscriber that
    // reconnects (or falls behind) catches up after its last offset, and a
    // reconnecting client's missed broadcasts are read back from it.
    this.#lane = new Lane((payload) => this.#publish(this.#channel, payload, true), this.#maxBatchBytes);
  }

  #responseChannel(uid: string): string {
    return `${this.#channel}${uid}#`;
  }

  async #publish(channel: string, payload: Uint8Array, durable: boolean): Promise<string | undefined> {
    const offset = await this.#client.publish(channel, payload, { durable });
    this.stats.published++;
    return offset;
  }

  /** Subscribes to both channels, then says hello. Until the sidecar can be
   * reached this retries in the background; broadcasts meanwhile reach this
   * instance's clients only. */
  override init(): Promise<void> {
    this.#starting = this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    for (let backoff = 100; !this.#closing; backoff = Math.min(backoff * 2, 5_000)) {
      try {
        // The namespace's channel is read from a mark placed before
        // anything this instance says, so nothing said to it is missed.
        const mark = await this.#publish(this.#channel, joinBatch([]), true);
        if (this.#closing) return;
        let opened: () => void = () => {};
        const open = new Promise<void>((resolve) => {
          opened = resolve;
        });
        void this.#listen(this.#responseChannel(this.uid), undefined, opened);
        void this.#listen(this.#channel, mark);
        await Promise.race([open, sleep(this.#restoreTimeoutMs)]);
        if (!this.#closing) super.init();
        return;
      } catch {
        await sleep(backoff);
      }
    }
  }

  /** Reads a channel until the adapter closes. */
  async #listen(channel: string, after: string | undefined, onOpen?: () => void): Promise<void> {
    const signal = this.#closed.signal;
    let last = after;
    while (!signal.aborted) {
      try {
        for await (const message of this.#client.subscribe(channel, { after: last, signal, onOpen })) {
          if (message.offset) last = message.offset;
          this.#dispatch(() => this.#receive(message));
        }
      } catch {
        // Refused (a wrong token, too many subscribers): try again later.
        await sleep(1_000);
      }
    }
  }

  #receive(message: Message): void {
    const batch = decodeBatch(message.payload);
    if (!batch) {
      this.stats.foreign++;
      return;
    }
    batch.forEach((item, index) => {
      if (!wellFormed(item)) {
        this.stats.malformed++;
        return;
      }
      if (item.nsp !== this.nsp.name) {
        this.stats.foreign++;
        return;
      }
      if (item.uid === this.uid) return; // delivered here when it was published
      const place = message.offset ? `${message.offset}/${index}` : undefined;
      if (place && item.type === MessageType.BROADCAST) this.#remember(place, item.data as BroadcastData);
      try {
        this.stats.received++;
        if (RESPONSES.has(item.type)) this.onResponse(item as ClusterResponse);
        else this.onMessage(item as ClusterMessage, place);
      } catch {
        this.stats.malformed++;
      }
    });
  }

  /**
   * A broadcast reaches this instance's sockets once it is published (so
   * they get it even if Redis dies with it undelivered), or at once when
   * the sidecar cannot take it; the others get it from the channel.
   */
  override async broadcast(packet: BroadcastData["packet"], opts: BroadcastOptions): Promise<void> {
    if (opts.flags?.local) return Adapter.prototype.broadcast.call(this, packet, opts);
    const data = { packet, opts: { rooms: [...opts.rooms], except: [...(opts.except ?? [])], flags: opts.flags ?? {} } };
    let place: string | undefined;
    try {
      place = (await this.publishAndReturnOffset({ type: MessageType.BROADCAST, data })) || undefined;
    } catch {
      // The sidecar cannot be reached: this instance's sockets at least.
    }
    this.#dispatch(() => {
      if (place) this.#remember(place, data);
      if (place && this.nsp.server.opts.connectionStateRecovery && recoverable(data)) packet.data.push(place);
      Adapter.prototype.broadcast.call(this, packet, opts);
    });
  }

  /** Dispatches now, or after a restored socket is set up (see below). */
  #dispatch(deliver: () => void): void {
    if (this.#held) this.#held.push(deliver);
    else deliver();
  }

  /** Holds dispatching back until the current turn of the event loop is
   * over: Socket.IO adds a restored socket to its namespace a few
   * microtasks after it joined its rooms, and a broadcast dispatched in
   * between would miss it. */
  #holdForRestore(): void {
    if (this.#held) return;
    this.#held = [];
    setImmediate(() => {
      const held = this.#held ?? [];
      this.#held = undefined;
      for (const deliver of held) deliver();
    });
  }

  #remember(place: string, data: BroadcastData): void {
    if (!this.nsp.server.opts.connectionStateRecovery || !recoverable(data)) return;
    const now = Date.now();
    // Long enough to cover a restore in progress.
    const horizon = now - this.#restoreTimeoutMs - 1_000;
    while (this.#recent.length > 0 && ((this.#recent[0] as Recent).at < horizon || this.#recent.length >= 10_000)) {
      this.#recent.shift();
    }
    const parsed = parsePlace(place) as Place;
    this.#recent.push({ place: parsed, at: now, rooms: data.opts.rooms, except: data.opts.except, data: [...data.packet.data, place] });
  }

  override publish(message: Parameters<ClusterAdapterWithHeartbeat["publish"]>[0]): void {
    if (this.#closing && message.type !== MessageType.ADAPTER_CLOSE) return;
    super.publish(message);
  }

  protected override doPublish(message: ClusterMessage): Promise<string> {
    return this.#lane.push(message);
  }

  protected override async doPublishResponse(requesterUid: string, response: ClusterResponse): Promise<void> {
    let lane = this.#responseLanes.get(requesterUid);
    if (!lane) {
      const channel = this.#responseChannel(requesterUid);
      lane = new Lane((payload) => this.#publish(channel, payload, false), this.#maxBatchBytes);
      this.#responseLanes.set(requesterUid, lane);
    }
    try {
      await lane.push(response);
    } finally {
      if (lane.idle) this.#responseLanes.delete(requesterUid);
    }
  }

  override persistSession(session: Omit<Session, "missedPackets">): void {
    const recovery = this.nsp.server.opts.connectionStateRecovery;
    const ttlMs = recovery?.maxDisconnectionDuration ?? 2 * 60_000;
    let value: Uint8Array;
    try {
      value = encode({ sid: session.sid, pid: session.pid, rooms: [...session.rooms], data: session.data }, { ignoreUndefined: true });
    } catch {
      return; // data that cannot be encoded: the client gets a new session
    }
    this.#client.set(this.#sessionPrefix + session.pid, value, { ttlMs }).catch(() => {});
  }

  /**
   * The session a client reconnecting with `pid` left, with the broadcasts
   * it missed after `offset`: read from the namespace's durable channel up
   * to a mark published now, then the ones this instance has dispatched
   * since the mark (kept briefly for this), so that nothing falls between
   * the history and the live room the socket joins, and nothing is in both. Rejects (Socket.IO then
   * starts a fresh session) when the session expired or was taken, when the
   * offset is no longer retained, or past `restoreTimeoutMs`.
   */
  override async restoreSession(pid: PrivateSessionId, offset: string): Promise<Session> {
    const from = parsePlace(offset);
    if (!from || from.index < 0) throw new Error(`offset ${JSON.stringify(offset)} is not one this adapter gave`);
    const key = this.#sessionPrefix + pid;
    const entry = await this.#client.get(key);
    if (!entry) throw new Error("no session to restore (expired, or restored already)");
    if (!(await this.#client.delete(key))) throw new Error("the session was restored by another instance");
    const stored = decode(entry.value) as { sid: string; pid: string; rooms: string[]; data: unknown };
    const mark = parsePlace((await this.#publish(this.#channel, joinBatch([]), true)) ?? "");
    if (!mark) throw new Error("the channel is not durable here (no offset for the mark)");
    // This instance's broadcasts published before the mark reach its
    // sockets when their publish returns: wait for those (all queued by
    // now), so none of them reaches the restored socket twice (from the
    // history and live).
    await Promise.race([this.#lane.barrier(), sleep(this.#restoreTimeoutMs)]);

    const missed: unknown[][] = [];
    const control = new AbortController();
    const timer = setTimeout(() => control.abort(), this.#restoreTimeoutMs);
    let first = true;
    let reached = false;
    try {
      for await (const message of this.#client.subscribe(this.#channel, { after: streamOffsetBefore(from), signal: control.signal })) {
        const at = parsePlace(message.offset ?? "");
        if (!at) continue;
        if (first) {
          first = false;
          if (at.ms !== from.ms || at.seq !== from.seq) throw new Error("the offset is no longer retained");
        }
        if (comparePlaces(at, mark) >= 0) {
          reached = true;
          break;
        }
        for (const [index, item] of (decodeBatch(message.payload) ?? []).entries()) {
          if (comparePlaces({ ...at, index }, from) <= 0 || !wellFormed(item)) continue;
          if (item.type !== MessageType.BROADCAST || item.nsp !== this.nsp.name) continue;
          const data = item.data as BroadcastData;
          if (recoverable(data) && reaches(stored.rooms, data.opts)) missed.push([...data.packet.data, `${message.offset}/${index}`]);
        }
      }
    } finally {
      clearTimeout(timer);
    }
    if (!reached) throw new Error(`the missed packets were not read within ${this.#restoreTimeoutMs} ms`);
    const recent = this.#recent;
    this.#holdForRestore();
    return {
      sid: stored.sid,
      pid: stored.pid,
      rooms: stored.rooms,
      data: stored.data,
      // Read when Socket.IO builds the socket, right after it joined its
      // rooms; what is dispatched from then on reaches it live (held back
      // until Socket.IO has added it to the namespace).
      get missedPackets() {
        const since = recent.filter((r) => comparePlaces(r.place, mark) > 0 && reaches(stored.rooms, r));
        return [...missed, ...since.map((r) => r.data)];
      },
    } as Session;
  }

  /** Says goodbye (the others drop this instance at once rather than after
   * the heartbeat timeout), then closes the channels. */
  override async close(): Promise<void> {
    this.#closing = true;
    super.close();
    await Promise.all([this.#starting, this.#lane.drained()]);
    this.#closed.abort();
    this.#release();
  }
}

/**
 * `io.adapter(createAdapter())`: every namespace of the server gets an
 * adapter on the sidecar (`OUTRIGGER_URL` / `OUTRIGGER_SOCKET` /
 * `OUTRIGGER_TOKEN`, or the options).
 */
export function createAdapter(options: AdapterOptions = {}): (nsp: unknown) => OutriggerAdapter {
  const client = options.client ?? new Client(options);
  let open = 0;
  const release = () => {
    if (--open === 0 && !options.client) client.close();
  };
  return function adapter(nsp: unknown) {
    open++;
    return new OutriggerAdapter(nsp, client, release, options);
  };
}
