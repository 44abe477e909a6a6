// The plugin world (sdk/wit, outrigger:plugin/plugin@0.5.0) as
// JavaScript sees it, and the helpers of this package.

/** What a request is made to. */
export type Primitive =
  | "cache" | "lock" | "semaphore" | "ratelimit" | "presence" | "pubsub"
  | "counter" | "map" | "queue" | "schedule";

/** What a request does to it. */
export type Operation =
  | "read" | "write" | "delete" | "invalidate-tag" | "invalidate-pattern" | "scan"
  | "acquire" | "release" | "extend" | "check" | "join" | "leave" | "members"
  | "watch" | "rooms" | "publish" | "subscribe" | "subscribe-pattern"
  | "increment" | "peek" | "enqueue" | "claim" | "settle";

/** One request, as `authorize` and `classify` see it. */
export interface Request {
  primitive: Primitive;
  operation: Operation;
  namespace: string;
  /** The key, name, room, channel, queue, tag or pattern acted on. */
  target: string;
  member?: string;
  policy?: string;
  cost?: number;
  valueSize?: bigint;
  /** `x-outrigger-caller`. */
  caller?: string;
  /** `x-outrigger-attr-<name>` headers: `[name, value]` pairs. */
  attributes: [string, string][];
}

export type Decision =
  | { tag: "allow" }
  | { tag: "deny"; val: string }
  | { tag: "rewrite"; val: { target: string } };

/** A rate-limit check's policy, key and cost, chosen by `classify`. */
export interface Limit {
  policy: string;
  key: string;
  cost: number;
}

/** An acknowledged cache write, as `onWrite` sees it. */
export interface WriteEvent {
  kind: "set" | "delete";
  namespace: string;
  key: string;
  tags: string[];
  valueSize: bigint;
  caller?: string;
  attributes: [string, string][];
}

/** More to invalidate after a write. */
export type Invalidation =
  | { tag: "key"; val: string }
  | { tag: "tag"; val: string }
  | { tag: "pattern"; val: string };

/** Where a value passes `onValue`: on its way in (`cache-write`,
 * `publish`) or out (`cache-read`, `deliver`). */
export type ValuePoint = "cache-write" | "cache-read" | "publish" | "deliver";

/** A cache value or pub/sub payload passing through the sidecar. */
export interface ValueEvent {
  point: ValuePoint;
  namespace: string;
  /** The cache key or the channel. */
  target: string;
  value: Uint8Array;
  caller?: string;
  attributes: [string, string][];
}

/** What `onValue` decided: the value as it came, other bytes, or a refusal. */
export type ValueDecision =
  | { tag: "keep" }
  | { tag: "replace"; val: Uint8Array }
  | { tag: "deny"; val: string };

/** A plugin: the hooks it implements. `init` gets the plugin's `config`
 * (parsed JSON) once, before any other call; throwing refuses it. */
export interface PluginHooks {
  init?(config: any): void;
  authorize?(request: Request): Decision;
  classify?(request: Request): Limit | undefined;
  onWrite?(event: WriteEvent): Invalidation[];
  onValue?(event: ValueEvent): ValueDecision;
}

/** Declares the plugin: the default export of its entry module. */
export function definePlugin<T extends PluginHooks>(hooks: T): T;

export function allow(): Decision;
/** Denies, with the reason the caller is told (HTTP 403, gRPC PERMISSION_DENIED). */
export function deny(reason: string): Decision;
/** Lets the request go on with `target` in place of its own. */
export function rewrite(target: string): Decision;
/** Keeps the value as it came (nothing is copied back). */
export function keep(): ValueDecision;
/** Goes on with these bytes instead (a string is taken as UTF-8). */
export function replace(value: Uint8Array | string): ValueDecision;
/** Refuses the value, with the reason the caller is told (HTTP 403). */
export function refuse(reason: string): ValueDecision;
/** The value of the request's attribute `name` (`x-outrigger-attr-<name>`). */
export function attribute(request: Request | WriteEvent | ValueEvent, name: string): string | undefined;

/** Lines in the sidecar's log, as this plugin's (at most 32 per call). */
export const log: {
  trace(message: string): void;
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
};

/** Milliseconds since the Unix epoch, the host's clock. */
export function nowMs(): number;
