/** A Socket.IO adapter on the Outrigger sidecar: `io.adapter(createAdapter())`. */

export { type AdapterOptions, type AdapterStats, createAdapter, OutriggerAdapter } from "./adapter.js";
