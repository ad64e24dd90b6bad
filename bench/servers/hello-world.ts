import Fastify from "fastify";

/** The HTTP ceiling: the same fastify version as the API, one route, no plugins, no logging. */
const app = Fastify({ logger: false });
app.get("/hello", async () => ({ hello: "world" }));
app.get("/health/live", async () => ({ status: "ok" }));

const port = Number(process.env.PORT ?? 0);
await app.listen({ port, host: "127.0.0.1" });
process.on("SIGTERM", () => {
  void app.close().then(() => process.exit(0));
});
