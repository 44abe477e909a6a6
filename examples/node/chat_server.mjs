// A chat server meant to run as several instances behind a load balancer:
// rooms, names, and clients that reconnect to any instance without losing
// what was said meanwhile. Instances reach each other through the Outrigger
// sidecar beside each one (OUTRIGGER_URL / OUTRIGGER_SOCKET): no Redis
// client here. Open http://localhost:3000 (PORT) in two browsers.

import { createServer } from "node:http";
import { createAdapter } from "@outrigger/socket.io-adapter";
import { Server } from "socket.io";

const page = `<!doctype html>
<meta charset="utf-8"><title>chat</title>
<style>body{font:16px system-ui;max-width:40em;margin:2em auto}#log{white-space:pre-wrap;min-height:10em}</style>
<p><input id="room" value="lobby"> <button id="join">join</button></p>
<div id="log"></div>
<form id="say"><input id="text" size="50" autocomplete="off"> <button>say</button></form>
<script src="/socket.io/socket.io.js"></script>
<script>
  const log = (line) => document.getElementById("log").append(line + "\\n");
  const socket = io({ auth: { name: prompt("your name") || "anonymous" } });
  let room;
  socket.on("connect", () => log(socket.recovered ? "(back, nothing missed)" : "(connected)"));
  socket.on("joined", (r, who) => log(who + " joined " + r));
  socket.on("said", (r, who, text) => log("[" + r + "] " + who + ": " + text));
  document.getElementById("join").onclick = async () => {
    room = document.getElementById("room").value;
    const { members } = await socket.emitWithAck("join", room);
    log(members + " in " + room);
  };
  document.getElementById("say").onsubmit = (e) => {
    e.preventDefault();
    socket.emit("say", room, document.getElementById("text").value);
    document.getElementById("text").value = "";
  };
</script>`;

const http = createServer((req, res) => {
  if (req.url !== "/") return res.writeHead(404).end();
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page);
});
const io = new Server(http, {
  adapter: createAdapter(),
  connectionStateRecovery: { maxDisconnectionDuration: 2 * 60_000 },
});

io.on("connection", (socket) => {
  const name = String(socket.handshake.auth.name ?? "anonymous").slice(0, 40);
  socket.on("join", async (room, ack) => {
    if (typeof room !== "string" || room === "" || room.length > 100) return ack?.({ error: "a room is 1 to 100 characters" });
    socket.join(room);
    io.to(room).emit("joined", room, name);
    // Members on every instance.
    ack?.({ members: (await io.in(room).fetchSockets()).length });
  });
  socket.on("say", (room, text) => {
    if (typeof text !== "string" || !socket.rooms.has(room)) return;
    io.to(room).emit("said", room, name, text.slice(0, 2_000));
  });
});

http.listen(Number(process.env.PORT ?? 3000), () => console.log(`chat on http://localhost:${http.address().port}`));
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => io.close(() => process.exit(0)));
