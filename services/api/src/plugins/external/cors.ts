import cors from "@fastify/cors";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import type { CorsOrigins } from "../../config";

/** What a browser client may read of an answer besides the CORS-safelisted headers. */
const EXPOSED_HEADERS = [
  "x-request-id",
  "retry-after",
  "x-ratelimit-limit-authenticated",
  "x-ratelimit-remaining-authenticated",
  "x-ratelimit-reset-authenticated",
  "x-ratelimit-limit-failed-auth",
  "x-ratelimit-remaining-failed-auth",
  "x-ratelimit-reset-failed-auth",
  "x-keyledger-valid-until",
];

/**
 * CORS, as Daytona's API enables it (`origin: true, credentials: true`: the dashboard calls it from the browser):
 * any origin by default, or only `origins`; preflights for every method the routes use. Registered ahead of the
 * rate limits, so that a 429 or 401 also carries the headers and the browser lets the client read it.
 */
export default fp(
  async (app: FastifyInstance, { origins }: { origins: CorsOrigins }) => {
    if (origins === "none") return;
    // An OPTIONS that is not a browser's preflight (no Origin or no Access-Control-Request-Method) is answered as
    // before CORS: no such route, in the error body (the plugin would answer 400 in plain text).
    app.addHook("onRequest", (request, reply, done) => {
      const { headers } = request;
      if (request.method !== "OPTIONS" || (headers.origin && headers["access-control-request-method"])) return done();
      reply.callNotFound();
    });
    await app.register(cors, {
      origin: origins === "any" ? true : origins,
      credentials: true,
      methods: ["GET", "HEAD", "POST", "PUT", "DELETE"],
      exposedHeaders: EXPOSED_HEADERS,
      maxAge: 600,
    });
  },
  { name: "cors" },
);
