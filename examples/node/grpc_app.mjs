// The same backend over gRPC with @grpc/grpc-js, loading ../../proto at
// run time with @grpc/proto-loader (no code generation step).
// OUTRIGGER_GRPC says where the sidecar is.

import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const TARGET = process.env.OUTRIGGER_GRPC ?? "127.0.0.1:7481";
const RUN = `${Date.now()}${Math.floor(Math.random() * 1e6)}`;

function check(what, ok) {
  if (!ok) {
    console.error(`FAIL ${what}`);
    process.exit(1);
  }
  console.log(`ok   ${what}`);
}

const definition = protoLoader.loadSync(
  ["cache", "lock", "ratelimit", "presence", "pubsub", "admin"].map((n) => `outrigger/v1/${n}.proto`),
  { includeDirs: [path.join(here, "..", "..", "proto")], keepCase: true, longs: String, enums: String, defaults: true },
);
const v1 = grpc.loadPackageDefinition(definition).outrigger.v1;
const credentials = grpc.credentials.createInsecure();
const client = (Service) => new Service(TARGET, credentials);
const unary = (stub, method, request) =>
  new Promise((resolve, reject) => stub[method](request, (err, reply) => (err ? reject(err) : resolve(reply))));

const status = await unary(client(v1.Admin), "Status", {});
check(`connected to outrigger ${status.version} on ${status.backend}`, status.backend === "redis");

// Login throttling.
const limiter = client(v1.RateLimit);
const decisions = [];
for (let i = 0; i < 6; i++) {
  decisions.push((await unary(limiter, "Check", { policy: "login", key: `gus-${RUN}` })).allowed);
}
check("five logins allowed, the sixth throttled", JSON.stringify(decisions) === "[true,true,true,true,true,false]");

// Session cache.
const cache = client(v1.Cache);
const { version } = await unary(cache, "Set", { key: `session:${RUN}`, value: Buffer.from("cart=1"), ttl_ms: 60000 });
const got = await unary(cache, "Get", { key: `session:${RUN}` });
check("session read back", got.found && got.value.toString() === "cart=1" && got.version === version);
try {
  await unary(cache, "Set", { key: `session:${RUN}`, value: Buffer.from("x"), condition: "CONDITION_IF_ABSENT" });
  check("a second create is refused", false);
} catch (err) {
  check("a second create is refused", err.code === grpc.status.FAILED_PRECONDITION);
}

// Room messages: subscribe, then publish.
const pubsub = client(v1.PubSub);
const stream = pubsub.Subscribe({ channels: [`room-${RUN}`] });
await new Promise((resolve) => stream.once("metadata", resolve)); // the subscription is live
const received = new Promise((resolve) => {
  const got = [];
  stream.on("data", (event) => {
    got.push(event.message.payload.toString());
    if (got.length === 2) resolve(got);
  });
});
for (const text of ["ping", "pong"]) {
  await unary(pubsub, "Publish", { channel: `room-${RUN}`, payload: Buffer.from(text) });
}
check("the room got both messages, in order", JSON.stringify(await received) === '["ping","pong"]');
stream.cancel();
stream.on("error", () => {}); // the cancellation itself

// Who is online.
const presence = client(v1.Presence);
await unary(presence, "Join", { room: `lobby-${RUN}`, member: "hana", ttl_ms: 30000 });
const list = await unary(presence, "List", { room: `lobby-${RUN}` });
check("Hana is online", list.members.length === 1 && list.members[0].member === "hana");
console.log("node grpc example: all checks passed");
process.exit(0);
