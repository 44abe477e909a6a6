#!/usr/bin/env node
// outrigger-plugin build ENTRY [-o OUT.wasm] [--no-wasi]
//
// Bundles ENTRY (TypeScript or JavaScript whose default export is
// `definePlugin({...})`) with this package's helpers, and makes it a
// WebAssembly component of the plugin world with componentize-js.
// With --no-wasi the component imports nothing from WASI: console
// output, clocks and random numbers then go nowhere or are fixed.
import { componentize } from "@bytecodealliance/componentize-js";
import * as esbuild from "esbuild";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const usage = "usage: outrigger-plugin build ENTRY [-o OUT.wasm] [--no-wasi]";

function parse(argv) {
  const [command, ...rest] = argv;
  if (command !== "build") throw new Error(usage);
  const options = { entry: undefined, out: "plugin.wasm", wasi: true };
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (arg === "-o" || arg === "--out") options.out = rest[++i];
    else if (arg === "--no-wasi") options.wasi = false;
    else if (!arg.startsWith("-") && options.entry === undefined) options.entry = arg;
    else throw new Error(`${usage}\nunexpected argument ${arg}`);
  }
  if (options.entry === undefined || options.out === undefined) throw new Error(usage);
  return options;
}

// The world's exports, over the plugin's hooks: the ones it leaves out
// answer as if it were not there (allow, no limit, nothing more). The
// sidecar calls `init` once, on the instance it loads the plugin with;
// every instance it makes later (more calls at once, or a failed call's
// replacement) runs the plugin's `init` before its first hook too.
const wrapper = (entry) => `
import plugin from ${JSON.stringify(entry)};
import { config } from "outrigger:plugin/host@0.5.0";

const implemented = [];
if (plugin.authorize) implemented.push("authorize");
if (plugin.classify) implemented.push("classify");
if (plugin.onWrite) implemented.push("on-write");
if (plugin.onValue) implemented.push("on-value");

export function hooks() {
  return implemented;
}

let ready = false;

function setUp() {
  if (ready) return;
  if (plugin.init) {
    const text = config();
    plugin.init(text ? JSON.parse(text) : {});
  }
  ready = true;
}

export function init() {
  try {
    setUp();
  } catch (err) {
    throw String(err && err.message !== undefined ? err.message : err);
  }
}

export function authorize(request) {
  setUp();
  return plugin.authorize ? plugin.authorize(request) : { tag: "allow" };
}

export function classify(request) {
  setUp();
  return plugin.classify ? plugin.classify(request) : undefined;
}

export function onWrite(event) {
  setUp();
  return plugin.onWrite ? plugin.onWrite(event) : [];
}

export function onValue(event) {
  setUp();
  return plugin.onValue ? plugin.onValue(event) : { tag: "keep" };
}
`;

async function build({ entry, out, wasi }) {
  const wit = [join(here, "wit"), resolve(here, "../wit")].find((dir) => existsSync(dir));
  if (!wit) throw new Error(`no plugin WIT next to ${here}`);
  const work = await mkdtemp(join(tmpdir(), "outrigger-plugin-"));
  try {
    const main = join(work, "main.js");
    await writeFile(main, wrapper(resolve(entry)));
    const bundle = join(work, "bundle.js");
    await esbuild.build({
      entryPoints: [main],
      bundle: true,
      format: "esm",
      platform: "neutral",
      target: "es2022",
      outfile: bundle,
      external: ["outrigger:*"],
      alias: { "@outrigger/plugin": join(here, "index.js") },
      logLevel: "warning",
    });
    const { component } = await componentize({
      sourcePath: bundle,
      witPath: wit,
      worldName: "plugin",
      disableFeatures: wasi
        ? ["http", "fetch-event"]
        : ["stdio", "random", "clocks", "http", "fetch-event"],
    });
    await writeFile(out, component);
    console.log(`${out}: ${(component.length / 1e6).toFixed(1)} MB`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

try {
  await build(parse(process.argv.slice(2)));
} catch (err) {
  console.error(err.message ?? err);
  process.exit(2);
}
