/** What travels on the channels: batches of the cluster adapter's messages
 * in one MessagePack envelope, and the offsets that name each of them. */

import { decode, encode } from "@msgpack/msgpack";

/** The envelope's first element: anything else on a channel is foreign. */
const TAG = "outrigger.socket.io/1";
const HEAD = encode(TAG);

/** A batch as sent: `[TAG, [message, ...]]`. Messages are encoded one by
 * one so that a batch can be cut by size before it is joined. */
export function encodeMessage(message: unknown): Uint8Array {
  return encode(message, { ignoreUndefined: true });
}

export function joinBatch(items: Uint8Array[]): Uint8Array {
  const n = items.length;
  const header = n < 16 ? Uint8Array.of(0x90 | n) : Uint8Array.of(0xdc, n >> 8, n & 0xff);
  let size = 1 + HEAD.length + header.length;
  for (const item of items) size += item.length;
  const out = new Uint8Array(size);
  out[0] = 0x92; // a two-element array
  out.set(HEAD, 1);
  out.set(header, 1 + HEAD.length);
  let at = 1 + HEAD.length + header.length;
  for (const item of items) {
    out.set(item, at);
    at += item.length;
  }
  return out;
}

/** The largest batch a `u16` array header can count. */
export const MAX_BATCH = 0xffff;

/** The messages of a batch, or undefined when the payload is not one. */
export function decodeBatch(payload: Uint8Array): unknown[] | undefined {
  let value: unknown;
  try {
    value = decode(payload);
  } catch {
    return undefined;
  }
  if (!Array.isArray(value) || value.length !== 2 || value[0] !== TAG || !Array.isArray(value[1])) return undefined;
  return value[1];
}

/** A message's place: the stream offset of its batch and its index in it.
 * Socket.IO hands it to clients as `"<ms>-<seq>/<index>"`. */
export interface Place {
  ms: number;
  seq: number;
  index: number;
}

export function formatPlace(streamOffset: string, index: number): string {
  return `${streamOffset}/${index}`;
}

export function parsePlace(text: string): Place | undefined {
  const m = /^(\d{1,15})-(\d{1,15})(?:\/(\d{1,5}))?$/.exec(text);
  if (!m) return undefined;
  return { ms: Number(m[1]), seq: Number(m[2]), index: Number(m[3] ?? -1) };
}

/** Orders places; a bare stream offset (index -1) sorts before its batch. */
export function comparePlaces(a: Place, b: Place): number {
  return a.ms - b.ms || a.seq - b.seq || a.index - b.index;
}

/** The stream offset just before `p`'s batch, so that reading after it
 * starts with the batch itself. */
export function streamOffsetBefore(p: Place): string {
  if (p.seq > 0) return `${p.ms}-${p.seq - 1}`;
  return `${p.ms - 1}-18446744073709551615`;
}
