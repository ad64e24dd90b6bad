import { keyStreamId } from "@keyledger/domain";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { expectErrorBody } from "../support/daytona-client";

describe("concurrent creates of one name through the API", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi();
  });
  afterAll(async () => {
    await api.close();
  });

  async function race(org: string, users: string[], name: string) {
    const requests = await Promise.all(
      users.map(async (user) => ({
        url: `${api.baseUrl}/api/api-keys`,
        init: {
          method: "POST",
          headers: { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" },
          body: JSON.stringify({ name, permissions: ["write:sandboxes"] }),
        },
      })),
    );
    // Tokens are signed beforehand, so the requests leave together.
    return Promise.all(
      requests.map(async ({ url, init }) => {
        const res = await fetch(url, init);
        return { status: res.status, body: (await res.json()) as Record<string, unknown> };
      }),
    );
  }

  async function keyCreatedCount(org: string, user: string, name: string): Promise<number> {
    const result = await sql<{ n: string }>`
      SELECT count(*) AS n FROM events WHERE stream_id = ${keyStreamId(org, user, name)} AND event_type = 'KeyCreated'
    `.execute(api.db);
    return Number(result.rows[0]?.n);
  }

  async function liveRows(org: string, user: string, name: string): Promise<number> {
    const result = await sql<{ n: string }>`
      SELECT count(*) AS n FROM api_keys
       WHERE organization_id = ${org} AND user_id = ${user} AND name = ${name} AND revoked_at IS NULL
    `.execute(api.db);
    return Number(result.rows[0]?.n);
  }

  it("two concurrent POSTs of one name by one user: one 201, one 409, one KeyCreated (10 rounds)", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    for (let round = 0; round < 10; round++) {
      const name = `race-${round}`;
      const results = await race(org, [user, user], name);
      const statuses = results.map((r) => r.status).sort();
      expect(statuses, JSON.stringify(results)).toEqual([201, 409]);
      const conflict = results.find((r) => r.status === 409);
      expectErrorBody(conflict?.body, 409, "API key with this name already exists", "/api/api-keys");
      expect(await keyCreatedCount(org, user, name)).toBe(1);
      expect(await liveRows(org, user, name)).toBe(1);
    }
  });

  it("five concurrent POSTs of one name: exactly one 201", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    for (let round = 0; round < 3; round++) {
      const name = `crowd-${round}`;
      const results = await race(org, [user, user, user, user, user], name);
      expect(results.map((r) => r.status).sort(), JSON.stringify(results)).toEqual([201, 409, 409, 409, 409]);
      expect(await keyCreatedCount(org, user, name)).toBe(1);
      expect(await liveRows(org, user, name)).toBe(1);
    }
  });

  it("concurrent POSTs of one name by different users: both 201 (names are per user)", async () => {
    const org = uniqueId("org");
    const [a, b] = [uniqueId("user"), uniqueId("user")];
    await api.setMember(org, a, "owner");
    await api.setMember(org, b, "owner");
    const results = await race(org, [a, b], "shared-name");
    expect(results.map((r) => r.status)).toEqual([201, 201]);
    expect(await keyCreatedCount(org, a, "shared-name")).toBe(1);
    expect(await keyCreatedCount(org, b, "shared-name")).toBe(1);
  });

  it("a name with history (a create assumes a new stream first): re-create after delete, 409 while live", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const headers = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
    const create = () =>
      fetch(`${api.baseUrl}/api/api-keys`, {
        method: "POST",
        headers,
        body: JSON.stringify({ name: "reused", permissions: [] }),
      });
    expect((await create()).status).toBe(201);
    expect((await fetch(`${api.baseUrl}/api/api-keys/reused`, { method: "DELETE", headers })).status).toBe(204);
    const again = await create();
    expect(again.status).toBe(201);
    const taken = await create();
    expect(taken.status).toBe(409);
    expectErrorBody(await taken.json(), 409, "API key with this name already exists", "/api/api-keys");
    const stream = await sql<{ stream_version: number; event_type: string }>`
      SELECT stream_version, event_type FROM events
       WHERE stream_id = ${keyStreamId(org, user, "reused")} AND event_type <> 'KeyUsed' ORDER BY stream_version
    `.execute(api.db);
    expect(stream.rows.map((r) => [r.stream_version, r.event_type])).toEqual([
      [1, "KeyCreated"],
      [2, "KeyRevoked"],
      [3, "KeyCreated"],
    ]);
    expect(await liveRows(org, user, "reused")).toBe(1);
  });

  it("a create racing a delete of the same name never leaves two live keys", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const headers = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
    for (let round = 0; round < 5; round++) {
      const name = `churn-${round}`;
      const create = () =>
        fetch(`${api.baseUrl}/api/api-keys`, {
          method: "POST",
          headers,
          body: JSON.stringify({ name, permissions: [] }),
        });
      expect((await create()).status).toBe(201);
      const [deleted, created] = await Promise.all([
        fetch(`${api.baseUrl}/api/api-keys/${name}`, { method: "DELETE", headers }),
        create(),
      ]);
      expect(deleted.status).toBe(204);
      expect([201, 409]).toContain(created.status);
      expect(await liveRows(org, user, name)).toBe(created.status === 201 ? 1 : 0);
    }
  });
});
