/** The Outrigger sidecar from Node: cache, locks and semaphores, rate limits,
 * counters, maps, presence and pub/sub. */

export {
  type Applied,
  type Bytes,
  type Change,
  Client,
  type ClientOptions,
  type Counter,
  type Decision,
  type Entry,
  type Field,
  type History,
  type HistoryMessage,
  type Resumed,
  type Lease,
  type Leased,
  type Limit,
  type MapFields,
  type Member,
  type Message,
} from "./client.js";
export {
  Conflict,
  InvalidArgument,
  LockLost,
  NotFound,
  OutriggerError,
  PermissionDenied,
  PreconditionFailed,
  RateLimited,
  TooLarge,
  Unauthorized,
  Unavailable,
} from "./errors.js";
export { expressRateLimit, fastifyRateLimit } from "./middleware.js";
