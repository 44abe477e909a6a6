// Checks chat_server.mjs as it would run: two instances on the sidecar at
// OUTRIGGER_URL, a client on each; what one says in a room the other hears.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { io as connect } from "socket.io-client";

function instance() {
  const child = spawn(process.execPath, ["chat_server.mjs"], { env: { ...process.env, PORT: "0" }, stdio: ["ignore", "pipe", "inherit"] });
  return once(child.stdout, "data").then(([line]) => ({ child, url: /(http:\S+)/.exec(String(line))[1] }));
}

const servers = [await instance(), await instance()];
try {
  const page = await fetch(servers[0].url).then((r) => r.text());
  assert.match(page, /socket\.io\.js/);
  const [ada, bob] = servers.map(({ url }, i) => connect(url, { auth: { name: ["ada", "bob"][i] } }));
  // Both instances count both members once they see each other.
  for (let members = 0; members < 2; ) {
    await bob.emitWithAck("join", "lobby");
    ({ members } = await ada.emitWithAck("join", "lobby"));
  }
  const heard = once(bob, "said");
  ada.emit("say", "lobby", "hello across instances");
  const [room, who, text] = await heard;
  assert.deepEqual([room, who, text], ["lobby", "ada", "hello across instances"]);
  console.log(`bob heard ${who} in ${room}: ${text}`);
  assert.deepEqual(await ada.emitWithAck("join", ""), { error: "a room is 1 to 100 characters" });
  ada.close();
  bob.close();
} finally {
  for (const { child } of servers) child.kill("SIGTERM");
}
