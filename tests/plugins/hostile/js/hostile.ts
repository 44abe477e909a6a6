// The hostile plugin in TypeScript: misbehaves in `authorize` and
// `onValue` as its config's `mode` says. `loop` (never returns), `bomb`
// (allocates until the memory cap), `throw` (throws), `throw-at-load`
// (throws in `init`), `mark` (behaves: `onValue` wraps each value,
// `{label}>value` on its way in and `value<{label}` on its way out),
// anything else denies. The sidecar must contain each as it does the Rust
// one's (../src/lib.rs).
import { definePlugin, deny, refuse, replace, type ValueEvent } from "@outrigger/plugin";

let mode = "deny";
let label = "";

function misbehave(): string {
  switch (mode) {
    case "loop":
      for (;;) {}
    case "bomb": {
      const hoard: ArrayBuffer[] = [];
      for (;;) hoard.push(new ArrayBuffer(8 << 20));
    }
    case "throw":
      throw new Error("hostile plugin throws");
    default:
      return "denied by the hostile test plugin";
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

export default definePlugin({
  init(config: { mode?: string; label?: string }) {
    mode = config.mode ?? "deny";
    label = config.label ?? "";
    if (mode === "throw-at-load") throw new Error("refusing to start");
  },

  authorize() {
    return deny(misbehave());
  },

  onValue(event: ValueEvent) {
    if (mode !== "mark") return refuse(misbehave());
    const text = new TextEncoder();
    const inbound = event.point === "cache-write" || event.point === "publish";
    return replace(
      inbound
        ? concat(text.encode(`${label}>`), event.value)
        : concat(event.value, text.encode(`<${label}`)),
    );
  },
});
