import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";

/**
 * A request that arrives while the API closes, on a keep-alive connection still busy with a request in flight
 * (closing leaves such connections open), is refused with Daytona's error body, not fastify's own.
 */
describe("a request arriving on a busy keep-alive connection during shutdown", () => {
  let api: RunningApi;
  let closed: Promise<void> | undefined;
  beforeAll(async () => {
    api = await startApi();
  });
  afterAll(async () => {
    await closed;
    await api.db.destroy();
    await api.issuer.close();
  });

  it("gets a 503 in Daytona's error body, with Connection: close", async () => {
    const org = uniqueId("closing-org");
    const owner = uniqueId("closing-owner");
    await api.setMember(org, owner, "owner");
    const headers = await api.jwtHeaders(owner, org);
    const port = Number(new URL(api.baseUrl).port);
    const socket = connect(port, "127.0.0.1");
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
    let raw = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk) => {
      raw += chunk;
    });
    const ended = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    const body = JSON.stringify({ name: "in-flight", permissions: [] });
    socket.write(
      `POST /api/api-keys HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${headers.authorization}\r\n` +
        `X-Daytona-Organization-ID: ${org}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body.slice(0, 10)}`,
    );
    await sleep(200);
    closed = api.app.close();
    await sleep(100);
    // The rest of the body, and a second request pipelined behind it on the same connection.
    socket.write(
      `${body.slice(10)}GET /api/api-keys HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${headers.authorization}\r\nX-Daytona-Organization-ID: ${org}\r\n\r\n`,
    );
    await Promise.race([ended, sleep(10_000)]);
    socket.destroy();

    const responses = raw.split(/(?=HTTP\/1\.1 )/);
    expect(responses, raw).toHaveLength(2);
    expect(responses[0]?.split("\r\n")[0]).toBe("HTTP/1.1 201 Created");
    const refused = responses[1] as string;
    expect(refused.split("\r\n")[0]).toBe("HTTP/1.1 503 Service Unavailable");
    expect(refused).toMatch(/\r\nconnection: close\r\n/i);
    expect(refused).toMatch(/\r\ncontent-type: application\/json/i);
    expect(JSON.parse(refused.slice(refused.indexOf("\r\n\r\n") + 4))).toEqual({
      path: "/api/api-keys",
      timestamp: expect.any(String),
      statusCode: 503,
      error: "Service Unavailable",
      message: "Service temporarily unavailable",
    });
  });
});
