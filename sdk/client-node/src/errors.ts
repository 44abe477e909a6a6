/** The errors a call rejects with: one class per error code of the HTTP API
 * (`{"error": {"code", "message"}}`). */

export class OutriggerError extends Error {
  /** The API's error code of this class. */
  static readonly code: string = "error";

  /** The API's error code. */
  readonly code: string;

  constructor(
    message: string,
    /** The HTTP status, 0 when the sidecar did not answer. */
    readonly status = 0,
  ) {
    super(message);
    this.name = new.target.name;
    this.code = (new.target as typeof OutriggerError).code;
  }
}

/** 400: the request is malformed (the message says how). */
export class InvalidArgument extends OutriggerError {
  static override readonly code = "invalid_argument";
}
/** 401: no valid token (`OUTRIGGER_TOKEN`). */
export class Unauthorized extends OutriggerError {
  static override readonly code = "unauthenticated";
}
/** 403: a plugin's policy refused the call. */
export class PermissionDenied extends OutriggerError {
  static override readonly code = "permission_denied";
}
/** 404: no such thing (a rate-limit policy, a route). */
export class NotFound extends OutriggerError {
  static override readonly code = "not_found";
}
/** 409: the object is in a state that refuses the call. */
export class Conflict extends OutriggerError {
  static override readonly code = "conflict";
}
/** 412: a conditional write whose condition did not hold. */
export class PreconditionFailed extends OutriggerError {
  static override readonly code = "precondition_failed";
}
/** 413: a key, value or batch over its limit. */
export class TooLarge extends OutriggerError {
  static override readonly code = "too_large";
}
/** 429: denied by a rate limit; `retryAfterMs` says when to come back. */
export class RateLimited extends OutriggerError {
  static override readonly code = "rate_limited";
  constructor(
    message: string,
    readonly retryAfterMs: number,
    status = 429,
  ) {
    super(message, status);
  }
}
/** 503: Redis is down and the primitive refuses meanwhile (the message says
 * why), or the sidecar is at a capacity limit; also when the sidecar cannot
 * be reached or does not answer in time. */
export class Unavailable extends OutriggerError {
  static override readonly code = "unavailable";
}
/** A lock held with `client.withLock` was lost: what it protected is no
 * longer exclusive. */
export class LockLost extends OutriggerError {
  static override readonly code = "lock_lost";
}

/** Each class with the HTTP status that carries it; codes come from the
 * classes (and `exhausted`, a full sidecar, and `out_of_memory`, a full
 * Redis refusing writes, are `Unavailable` too: try again later). */
const byStatus = new Map<number, typeof OutriggerError>([
  [400, InvalidArgument],
  [401, Unauthorized],
  [403, PermissionDenied],
  [404, NotFound],
  [409, Conflict],
  [412, PreconditionFailed],
  [413, TooLarge],
  [503, Unavailable],
  [507, Unavailable],
]);
const byCode = new Map<string, typeof OutriggerError>([
  ...[...byStatus.values()].map((cls): [string, typeof OutriggerError] => [cls.code, cls]),
  ["exhausted", Unavailable],
  ["out_of_memory", Unavailable],
]);

/** The error an answer carries. */
export function errorFrom(status: number, headers: Record<string, string>, body: Buffer): OutriggerError {
  let code = "";
  let message = `HTTP ${status}`;
  try {
    const detail = (JSON.parse(body.toString("utf8")) as { error?: { code?: string; message?: string } }).error;
    if (detail?.code && detail.message) {
      code = detail.code;
      message = detail.message;
    }
  } catch {
    if (body.length > 0) message = `HTTP ${status}: ${body.toString("utf8").slice(0, 200)}`;
  }
  if (status === 429 || code === "rate_limited") {
    const retry = Number(headers["retry-after"] ?? 0);
    return new RateLimited(message, retry * 1000, status);
  }
  const Cls = byCode.get(code) ?? byStatus.get(status) ?? OutriggerError;
  return new Cls(message, status);
}
