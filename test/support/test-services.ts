import { existsSync } from "node:fs";
import { request } from "node:http";
import { homedir } from "node:os";
import { join } from "node:path";

/** Where the tests' Postgres and NATS come from. */
export type TestServices = {
  /** A Postgres server URL (any database on it; the setup creates its own). */
  postgresUrl: string;
  natsUrl: string;
  /** For the run's first line: which is which. */
  description: string;
  stop(): Promise<void>;
};

const LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres";
const LOCAL_NATS = "nats://127.0.0.1:4222";

/** The Docker engine's socket, if one is configured or sits at a usual place. TCP engines need DOCKER_HOST. */
function dockerEndpoint(env: Record<string, string | undefined>): { socketPath: string } | { url: URL } | undefined {
  const host = env.DOCKER_HOST;
  if (host?.startsWith("unix://")) return { socketPath: host.slice("unix://".length) };
  if (host?.startsWith("tcp://")) return { url: new URL(`http://${host.slice("tcp://".length)}`) };
  const candidates = [
    "/var/run/docker.sock",
    join(homedir(), ".docker/run/docker.sock"),
    ...(env.XDG_RUNTIME_DIR ? [join(env.XDG_RUNTIME_DIR, "docker.sock")] : []),
  ];
  const socketPath = candidates.find((path) => existsSync(path));
  return socketPath ? { socketPath } : undefined;
}

/**
 * Whether a Docker engine answers `/_ping` within `timeoutMs`. Without a socket or DOCKER_HOST it answers at once,
 * so a machine without Docker (CI here) never waits.
 */
export function dockerEngineAnswers(env: Record<string, string | undefined>, timeoutMs = 1_500): Promise<boolean> {
  const endpoint = dockerEndpoint(env);
  if (!endpoint) return Promise.resolve(false);
  return new Promise((resolve) => {
    const target =
      "socketPath" in endpoint
        ? { socketPath: endpoint.socketPath, path: "/_ping" }
        : { host: endpoint.url.hostname, port: Number(endpoint.url.port || 2375), path: "/_ping" };
    const req = request({ ...target, method: "GET", timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(false));
    req.end();
  });
}

/**
 * `DATABASE_URL` and `NATS_URL` when set. For the ones not set: containers (Postgres 16, NATS 2 with JetStream)
 * when a Docker engine answers and `KEYLEDGER_TESTCONTAINERS` is not `off`, else the local services
 * (127.0.0.1:5432 and :4222, as on CI here).
 */
export async function startTestServices(env: Record<string, string | undefined>): Promise<TestServices> {
  const needPostgres = !env.DATABASE_URL;
  const needNats = !env.NATS_URL;
  const useContainers =
    (needPostgres || needNats) && env.KEYLEDGER_TESTCONTAINERS !== "off" && (await dockerEngineAnswers(env));
  if (!useContainers) {
    return {
      postgresUrl: env.DATABASE_URL || LOCAL_POSTGRES,
      natsUrl: env.NATS_URL || LOCAL_NATS,
      description: `${env.DATABASE_URL ? "DATABASE_URL" : "local Postgres"}, ${env.NATS_URL ? "NATS_URL" : "local NATS"}`,
      stop: async () => {},
    };
  }
  // Loaded only here, so runs without Docker never load the client.
  const { GenericContainer, Wait } = await import("testcontainers");
  const { PostgreSqlContainer } = await import("@testcontainers/postgresql");
  const [postgres, nats] = await Promise.all([
    needPostgres ? new PostgreSqlContainer("postgres:16-alpine").withUsername("postgres").start() : undefined,
    needNats
      ? new GenericContainer("nats:2")
          .withCommand(["-js"])
          .withExposedPorts(4222)
          .withWaitStrategy(Wait.forLogMessage(/Server is ready/))
          .start()
      : undefined,
  ]);
  return {
    postgresUrl: postgres ? postgres.getConnectionUri() : (env.DATABASE_URL as string),
    natsUrl: nats ? `nats://${nats.getHost()}:${nats.getMappedPort(4222)}` : (env.NATS_URL as string),
    description: `${postgres ? "Postgres in a container" : "DATABASE_URL"}, ${nats ? "NATS in a container" : "NATS_URL"}`,
    async stop() {
      await Promise.all([postgres?.stop(), nats?.stop()]);
    },
  };
}
