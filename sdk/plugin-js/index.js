// The helpers behind index.d.ts. The host's functions are imported from
// the plugin world; `outrigger-plugin build` bundles this module with the
// plugin and makes it a component.
import { log as hostLog, nowMs as hostNowMs } from "outrigger:plugin/host@0.5.0";

export function definePlugin(hooks) {
  return hooks;
}

export function allow() {
  return { tag: "allow" };
}

export function deny(reason) {
  return { tag: "deny", val: String(reason) };
}

export function rewrite(target) {
  return { tag: "rewrite", val: { target: String(target) } };
}

export function keep() {
  return { tag: "keep" };
}

export function replace(value) {
  if (typeof value === "string") value = new TextEncoder().encode(value);
  if (!(value instanceof Uint8Array)) throw new TypeError("replace takes a Uint8Array or a string");
  return { tag: "replace", val: value };
}

export function refuse(reason) {
  return { tag: "deny", val: String(reason) };
}

export function attribute(request, name) {
  const found = request.attributes.find(([key]) => key === name);
  return found === undefined ? undefined : found[1];
}

const line = (level) => (message) => hostLog(level, String(message));

export const log = {
  trace: line("trace"),
  debug: line("debug"),
  info: line("info"),
  warn: line("warn"),
  error: line("error"),
};

export function nowMs() {
  return Number(hostNowMs());
}
