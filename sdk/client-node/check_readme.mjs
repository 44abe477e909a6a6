// Runs the README's five-minute tour as written, as a user would: the
// package packed (`npm pack`) and installed into an empty project, the
// ```js block run there against a fresh sidecar on the memory backend; the
// ```output block after it must equal what it printed.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startSidecar } from "./test/live.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const readme = readFileSync(path.join(here, "README.md"), "utf8");
const blocks = [...readme.matchAll(/^```(\w+)\n([\s\S]*?)^```\s*$/gm)].map((m) => [m[1], m[2]]);
const at = blocks.findIndex(([lang]) => lang === "js");
if (at < 0 || blocks[at + 1]?.[0] !== "output") {
  console.error("tour: README.md needs a ```js block followed by an ```output block");
  process.exit(1);
}
const [[, code], [, expected]] = [blocks[at], blocks[at + 1]];

const project = mkdtempSync(path.join(tmpdir(), "outrigger-node-tour-"));
const tarball = execFileSync("npm", ["pack", "--silent", "--pack-destination", project], { cwd: here }).toString().trim();
writeFileSync(path.join(project, "package.json"), JSON.stringify({ name: "tour", private: true, type: "module" }));
execFileSync("npm", ["install", "--silent", "--no-audit", "--no-fund", path.join(project, tarball)], { cwd: project });
writeFileSync(path.join(project, "tour.mjs"), code);

const sidecar = await startSidecar();
try {
  const out = execFileSync("node", ["tour.mjs"], { cwd: project, env: { ...process.env, OUTRIGGER_URL: sidecar.url } }).toString();
  if (out !== expected) {
    console.error(`tour printed:\n${out}\nthe README says:\n${expected}`);
    process.exitCode = 1;
  } else {
    console.log("tour: ran as written, from the packed package");
  }
} finally {
  await sidecar.stop();
}
