/** One channel's outgoing messages, in order: one publish in flight at a
 * time, and whatever queued meanwhile goes out as the next batch. Order per
 * sender holds because each batch is published only once the previous one
 * has been (the client's calls may take different connections), and under
 * load the batches grow instead of the queue of round trips. */

import { encodeMessage, formatPlace, joinBatch, MAX_BATCH } from "./wire.js";

interface Pending {
  bytes: Uint8Array;
  resolve: (place: string) => void;
  reject: (err: unknown) => void;
}

/** Publishes a payload; resolves to its stream offset (durable) or "". */
export type Send = (payload: Uint8Array) => Promise<string | undefined>;

export class Lane {
  readonly #send: Send;
  readonly #maxBytes: number;
  #queue: Pending[] = [];
  #busy = false;
  #drained: (() => void)[] = [];
  #tail: Promise<void> = Promise.resolve();

  constructor(send: Send, maxBytes: number) {
    this.#send = send;
    this.#maxBytes = maxBytes;
  }

  /** Queues a message; resolves to its place (`"<offset>/<index>"`, or ""
   * on a live-only channel) once its batch is published. */
  push(message: unknown): Promise<string> {
    let bytes: Uint8Array;
    try {
      bytes = encodeMessage(message);
    } catch (err) {
      return Promise.reject(err);
    }
    const pushed = new Promise<string>((resolve, reject) => {
      this.#queue.push({ bytes, resolve, reject });
      if (!this.#busy) void this.#drain();
    });
    // A barrier awaiting this runs after the continuations of whoever
    // awaited `pushed` before the barrier was taken.
    this.#tail = pushed.then(
      () => {},
      () => {},
    );
    return pushed;
  }

  async #drain(): Promise<void> {
    this.#busy = true;
    try {
      while (this.#queue.length > 0) {
        // As many as fit (one at least, however large: the sidecar judges it).
        let size = 0;
        let n = 0;
        while (n < this.#queue.length && n < MAX_BATCH) {
          const next = this.#queue[n] as Pending;
          if (n > 0 && size + next.bytes.length > this.#maxBytes) break;
          size += next.bytes.length;
          n++;
        }
        const batch = this.#queue.splice(0, n);
        try {
          const offset = await this.#send(joinBatch(batch.map((p) => p.bytes)));
          batch.forEach((p, i) => {
            p.resolve(offset ? formatPlace(offset, i) : "");
          });
        } catch (err) {
          for (const p of batch) p.reject(err);
        }
      }
    } finally {
      this.#busy = false;
      for (const resolve of this.#drained.splice(0)) resolve();
    }
  }

  /** Resolves once everything queued so far has been published (or
   * failed), and the callers awaiting it have run; batches complete in
   * order, so the last one queued is enough to wait for. */
  barrier(): Promise<void> {
    return this.#tail;
  }

  /** Whether nothing is queued or in flight. */
  get idle(): boolean {
    return !this.#busy;
  }

  /** Resolves once everything queued so far has been published (or failed). */
  drained(): Promise<void> {
    if (!this.#busy) return Promise.resolve();
    return new Promise((resolve) => this.#drained.push(resolve));
  }
}
