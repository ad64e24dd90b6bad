import type { AddressInfo } from "node:net";
import { buildGateway, type Gateway } from "@keyledger/gateway";
import { createVerifier, type Verifier } from "@keyledger/verifier";
import Fastify, { type FastifyInstance } from "fastify";
import { expect, inject } from "vitest";
import { type RunningApi, startApi, uniqueId } from "./api-harness";
import type { TestEventStream } from "./nats";

/** The API, an upstream that answers everything, and a gateway in front of it, with an owner in an organization. */
export type GatewayStack = {
  api: RunningApi;
  verifier: Verifier;
  gateway: Gateway;
  gatewayUrl: string;
  org: string;
  /** The owner's JWT headers (and a JSON content type). */
  headers: Record<string, string>;
  /** Creates a key of the owner's (201 expected); its value. */
  create(name: string): Promise<string>;
  /** Revokes the owner's key `name` (204 expected). */
  revoke(name: string): Promise<void>;
  /** The status of a request through the gateway with `value`. */
  viaGateway(value: string): Promise<number>;
  close(): Promise<void>;
};

/**
 * Starts the stack for fault tests on `stream` (a private NATS server's): the API reaches NATS at `apiNatsUrl`
 * (e.g. through a proxy the test controls; default the stream's server), the gateway's verifier at the server
 * itself, caching for 10 minutes, so only an event, losing NATS or missing relay heartbeats make it forget a key.
 */
export async function startGatewayStack(
  stream: TestEventStream,
  options: { apiNatsUrl?: string; keyUsedThrottleMs?: number; name: string },
): Promise<GatewayStack> {
  const api = await startApi({
    keyUsedThrottleMs: options.keyUsedThrottleMs ?? 0,
    nats: {
      url: options.apiNatsUrl ?? stream.natsUrl,
      streamName: stream.streamName,
      subjectPrefix: stream.subjectPrefix,
      relay: { databaseUrl: inject("databaseUrl") },
    },
  });
  const upstream: FastifyInstance = Fastify();
  upstream.all("/*", async () => ({ upstream: "reached" }));
  await upstream.listen({ port: 0, host: "127.0.0.1" });
  const verifier = createVerifier({
    apiUrl: api.baseUrl,
    natsUrl: stream.natsUrl,
    subjectPrefix: stream.subjectPrefix,
    cache: { maxEntries: 1000, ttlMs: 600_000 },
  });
  const gateway = await buildGateway({
    upstreamUrl: `http://127.0.0.1:${(upstream.server.address() as AddressInfo).port}`,
    verifier,
  });
  await gateway.listen({ port: 0, host: "127.0.0.1" });
  const gatewayUrl = `http://127.0.0.1:${(gateway.server.address() as AddressInfo).port}`;
  const org = uniqueId(`${options.name}-org`);
  const owner = uniqueId(`${options.name}-owner`);
  await api.setMember(org, owner, "owner");
  const headers = { ...(await api.jwtHeaders(owner, org)), "content-type": "application/json" };
  return {
    api,
    verifier,
    gateway,
    gatewayUrl,
    org,
    headers,
    async create(name) {
      const res = await fetch(`${api.baseUrl}/api/api-keys`, {
        method: "POST",
        headers,
        body: JSON.stringify({ name, permissions: [] }),
      });
      expect(res.status, await res.clone().text()).toBe(201);
      return ((await res.json()) as { value: string }).value;
    },
    async revoke(name) {
      const res = await fetch(`${api.baseUrl}/api/api-keys/${name}`, { method: "DELETE", headers });
      expect(res.status).toBe(204);
    },
    viaGateway: (value) =>
      fetch(`${gatewayUrl}/sandbox/1`, { headers: { authorization: `Bearer ${value}` } }).then((r) => r.status),
    async close() {
      await gateway.close();
      await verifier.close();
      await upstream.close();
      await api.close();
    },
  };
}
