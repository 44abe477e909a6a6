/** Rate limits as Express middleware and a Fastify hook. Neither framework
 * is a dependency: the shapes used are their documented request/response
 * surfaces. */

import type { Client, Decision } from "./client.js";

interface ExpressResponse {
  setHeader(name: string, value: string): unknown;
  status(code: number): { json(body: unknown): unknown };
}

interface FastifyReply {
  header(name: string, value: string): FastifyReply;
  code(code: number): FastifyReply;
  send(body: unknown): unknown;
}

function headers(d: Decision): [string, string][] {
  const out: [string, string][] = [
    ["RateLimit-Limit", String(d.limit)],
    ["RateLimit-Remaining", String(d.remaining)],
    ["RateLimit-Reset", String(Math.ceil(d.resetAfterMs / 1000))],
  ];
  if (!d.allowed) out.push(["Retry-After", String(Math.ceil((d.retryAfterMs ?? 0) / 1000))]);
  return out;
}

function denial(d: Decision) {
  return {
    error: {
      code: "rate_limited",
      message: `rate limited; retry after ${Math.ceil((d.retryAfterMs ?? 0) / 1000)} s`,
    },
  };
}

/** Express middleware: checks `policy` for `key(req)`; a denied request is
 * answered 429 with `Retry-After` and never reaches the route. A sidecar
 * error goes to `next(err)`. */
export function expressRateLimit<Req>(
  client: Client,
  policy: string,
  key: (req: Req) => string,
  options: { cost?: number } = {},
): (req: Req, res: ExpressResponse, next: (err?: unknown) => void) => void {
  return (req, res, next) => {
    client.check(policy, key(req), options).then((d) => {
      for (const [name, value] of headers(d)) res.setHeader(name, value);
      if (d.allowed) next();
      else res.status(429).json(denial(d));
    }, next);
  };
}

/** A Fastify `onRequest` (or `preHandler`) hook: checks `policy` for
 * `key(request)`; a denied request is answered 429 with `Retry-After`. */
export function fastifyRateLimit<Req>(
  client: Client,
  policy: string,
  key: (request: Req) => string,
  options: { cost?: number } = {},
): (request: Req, reply: FastifyReply) => Promise<unknown> {
  return async (request, reply) => {
    const d = await client.check(policy, key(request), options);
    for (const [name, value] of headers(d)) reply.header(name, value);
    if (!d.allowed) return reply.code(429).send(denial(d));
    return undefined;
  };
}
