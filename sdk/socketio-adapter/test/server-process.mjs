// A cluster member in a process of its own (for the SIGKILL test): a
// Socket.IO server on the sidecar at SIDECAR_URL; prints its URL.

import { startServer } from "./cluster.mjs";

const server = await startServer(process.env.SIDECAR_URL);
process.stdout.write(`${server.url}\n`);
