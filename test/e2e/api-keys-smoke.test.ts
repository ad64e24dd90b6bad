import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";

describe("API keys over HTTP (smoke)", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi();
  });
  afterAll(async () => {
    await api.close();
  });

  it("creates, reads, uses and deletes a key", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    const headers = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
    const created = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers,
      body: JSON.stringify({ name: "ci", permissions: ["write:sandboxes"] }),
    });
    const body = (await created.json()) as { value: string };
    expect(created.status, JSON.stringify(body)).toBe(201);
    expect(body.value).toMatch(/^dtn_[0-9a-f]{64}$/);

    const current = await fetch(`${api.baseUrl}/api/api-keys/current`, {
      headers: { authorization: `Bearer ${body.value}` },
    });
    expect(current.status).toBe(200);
    expect(((await current.json()) as { name: string }).name).toBe("ci");

    const list = await fetch(`${api.baseUrl}/api/api-keys`, { headers });
    expect(list.status).toBe(200);
    const items = (await list.json()) as { value: string }[];
    expect(items).toHaveLength(1);
    expect(items[0]?.value).toBe(`dtn${"*".repeat(20)}${body.value.slice(-3)}`);
    // A trailing slash is the same route (as in Daytona), for the list, a key and the presented key.
    const slashed = await fetch(`${api.baseUrl}/api/api-keys/`, { headers });
    expect(slashed.status).toBe(200);
    // The same list but for lastUsedAt: the use above is recorded as KeyUsed about 15 ms later, maybe in between.
    const withoutLastUse = (list: object[]) => list.map((item) => ({ ...item, lastUsedAt: undefined }));
    expect(withoutLastUse((await slashed.json()) as object[])).toEqual(withoutLastUse(items));
    expect((await fetch(`${api.baseUrl}/api/api-keys/ci/`, { headers })).status).toBe(200);
    const currentSlashed = await fetch(`${api.baseUrl}/api/api-keys/current/`, {
      headers: { authorization: `Bearer ${body.value}` },
    });
    expect(currentSlashed.status).toBe(200);

    const deleted = await fetch(`${api.baseUrl}/api/api-keys/ci`, { method: "DELETE", headers });
    expect(deleted.status).toBe(204);
    const after = await fetch(`${api.baseUrl}/api/api-keys/current`, {
      headers: { authorization: `Bearer ${body.value}` },
    });
    expect(after.status).toBe(401);
    expect(await after.json()).toMatchObject({
      statusCode: 401,
      error: "Unauthorized",
      message: "Invalid credentials",
    });
  });
});
