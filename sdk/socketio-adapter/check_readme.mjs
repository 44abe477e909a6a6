// Runs the README's example as written, as a user would: this package and
// the client it runs on packed (`npm pack`) and installed into an empty
// project with Socket.IO, the ```js block run there against a fresh sidecar
// on the memory backend; the ```output block after it must equal what it
// printed.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startSidecar } from "../client-node/test/live.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const readme = readFileSync(path.join(here, "README.md"), "utf8");
const blocks = [...readme.matchAll(/^```(\w+)\n([\s\S]*?)^```\s*$/gm)].map((m) => [m[1], m[2]]);
const at = blocks.findIndex(([lang]) => lang === "js");
if (at < 0 || blocks[at + 1]?.[0] !== "output") {
  console.error("example: README.md needs a ```js block followed by an ```output block");
  process.exit(1);
}
const [[, code], [, expected]] = [blocks[at], blocks[at + 1]];

// The same Socket.IO as the tests (already in npm's cache).
const pinned = JSON.parse(readFileSync(path.join(here, "package.json"), "utf8")).devDependencies;
const project = mkdtempSync(path.join(tmpdir(), "outrigger-sio-example-"));
const pack = (dir) => execFileSync("npm", ["pack", "--silent", "--pack-destination", project], { cwd: dir }).toString().trim();
const tarballs = [pack(path.join(here, "../client-node")), pack(here)].map((t) => path.join(project, t));
writeFileSync(path.join(project, "package.json"), JSON.stringify({ name: "example", private: true, type: "module" }));
const install = [...tarballs, `socket.io@${pinned["socket.io"]}`, `socket.io-client@${pinned["socket.io-client"]}`];
execFileSync("npm", ["install", "--silent", "--no-audit", "--no-fund", "--prefer-offline", ...install], { cwd: project });
writeFileSync(path.join(project, "chat.mjs"), code);

const sidecar = await startSidecar();
try {
  const out = execFileSync("node", ["chat.mjs"], { cwd: project, env: { ...process.env, OUTRIGGER_URL: sidecar.url }, timeout: 30_000 }).toString();
  if (out !== expected) {
    console.error(`the example printed:\n${out}\nthe README says:\n${expected}`);
    process.exitCode = 1;
  } else {
    console.log("example: ran as written, from the packed packages");
  }
} finally {
  await sidecar.stop();
}
