import { createServer as createHttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createServer, type Server, type Socket } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { dockerEngineAnswers, startTestServices } from "../support/test-services";

describe("test services: local services or testcontainers", () => {
  const servers: (Server | ReturnType<typeof createHttpServer>)[] = [];
  const sockets: Socket[] = [];
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    for (const server of servers) if ("closeAllConnections" in server) server.closeAllConnections();
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  });

  async function listen<S extends Server | ReturnType<typeof createHttpServer>>(server: S): Promise<number> {
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return (server.address() as AddressInfo).port;
  }

  it("sees no engine without a socket or DOCKER_HOST", async () => {
    expect(await dockerEngineAnswers({ DOCKER_HOST: "unix:///nonexistent/docker.sock" })).toBe(false);
  });

  it("sees an engine that answers /_ping, and none behind a port that never answers", async () => {
    const engine = await listen(
      createHttpServer((req, res) => {
        res.writeHead(req.url === "/_ping" ? 200 : 404);
        res.end("OK");
      }),
    );
    expect(await dockerEngineAnswers({ DOCKER_HOST: `tcp://127.0.0.1:${engine}` })).toBe(true);
    const silent = await listen(createServer((socket) => sockets.push(socket)));
    expect(await dockerEngineAnswers({ DOCKER_HOST: `tcp://127.0.0.1:${silent}` }, 200)).toBe(false);
  });

  it("uses DATABASE_URL and NATS_URL when set, without asking Docker", async () => {
    const services = await startTestServices({
      DATABASE_URL: "postgres://db.invalid/x",
      NATS_URL: "nats://nats.invalid:4222",
      DOCKER_HOST: "tcp://127.0.0.1:1",
    });
    expect(services).toMatchObject({ postgresUrl: "postgres://db.invalid/x", natsUrl: "nats://nats.invalid:4222" });
  });

  it("falls back to the local services when no engine answers", async () => {
    const services = await startTestServices({ DOCKER_HOST: "unix:///nonexistent/docker.sock" });
    expect(services.postgresUrl).toBe("postgres://postgres@127.0.0.1:5432/postgres");
    expect(services.natsUrl).toBe("nats://127.0.0.1:4222");
    expect(services.description).toBe("local Postgres, local NATS");
  });
});
