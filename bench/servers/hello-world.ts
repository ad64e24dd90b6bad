import Fastify from "fastify";

/**
 * The HTTP ceiling: the same fastify version as the API, one route, no plugins, no logging. With
 * `STATIC_RESPONSE` (JSON `{ headers, body }`) it also answers `GET /static` with exactly those headers and body
 * and no other code: the floor for a route that must send that response.
 */
const app = Fastify({ logger: false });
app.get("/hello", async () => ({ hello: "world" }));
app.get("/health/live", async () => ({ status: "ok" }));
if (process.env.STATIC_RESPONSE) {
  const { headers, body } = JSON.parse(process.env.STATIC_RESPONSE) as {
    headers: Record<string, string>;
    body: string;
  };
  app.get("/static", (_request, reply) => {
    reply.headers(headers).send(body);
  });
}

const port = Number(process.env.PORT ?? 0);
await app.listen({ port, host: "127.0.0.1" });
process.on("SIGTERM", () => {
  void app.close().then(() => process.exit(0));
});
