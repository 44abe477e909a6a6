// The hostile plugin in TypeScript: misbehaves in `authorize` as its
// config's `mode` says. `loop` (never returns), `bomb` (allocates until
// the memory cap), `throw` (throws), `throw-at-load` (throws in `init`),
// anything else denies. The sidecar must contain each as it does the Rust
// one's (../src/lib.rs).
import { definePlugin, deny } from "@outrigger/plugin";

let mode = "deny";

export default definePlugin({
  init(config: { mode?: string }) {
    mode = config.mode ?? "deny";
    if (mode === "throw-at-load") throw new Error("refusing to start");
  },

  authorize() {
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
        return deny("denied by the hostile test plugin");
    }
  },
});
