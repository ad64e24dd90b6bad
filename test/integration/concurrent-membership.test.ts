import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";

/**
 * A member creating a key while their access is taken away: whichever commits first, no live key may end up
 * holding a permission the member no longer has.
 */
describe("key creation racing a membership downgrade or removal", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi();
  });
  afterAll(async () => {
    await api.close();
  });

  async function liveKeys(org: string, user: string) {
    const result = await sql<{ name: string; permissions: string[] }>`
      SELECT name, permissions FROM api_keys WHERE organization_id = ${org} AND user_id = ${user} AND revoked_at IS NULL
    `.execute(api.db);
    return result.rows;
  }

  it("after a downgrade races a create, no live key holds a lost permission (10 rounds)", async () => {
    for (let round = 0; round < 10; round++) {
      const org = uniqueId("org");
      const member = uniqueId("member");
      await api.setMember(org, member, "member", ["write:sandboxes", "delete:sandboxes"]);
      const headers = { ...(await api.jwtHeaders(member, org)), "content-type": "application/json" };
      const [created] = await Promise.all([
        fetch(`${api.baseUrl}/api/api-keys`, {
          method: "POST",
          headers,
          body: JSON.stringify({ name: "racing", permissions: ["delete:sandboxes"] }),
        }).then((res) => res.status),
        api.setMember(org, member, "member", ["write:sandboxes"]),
      ]);
      expect([201, 403]).toContain(created);
      expect(await liveKeys(org, member)).toEqual([]);
    }
  });

  it("after a removal races a create, the member has no live key (10 rounds)", async () => {
    for (let round = 0; round < 10; round++) {
      const org = uniqueId("org");
      const member = uniqueId("member");
      await api.setMember(org, member, "member", ["read:volumes"]);
      const headers = { ...(await api.jwtHeaders(member, org)), "content-type": "application/json" };
      const [created] = await Promise.all([
        fetch(`${api.baseUrl}/api/api-keys`, {
          method: "POST",
          headers,
          body: JSON.stringify({ name: "racing", permissions: [] }),
        }).then((res) => res.status),
        api.removeMember(org, member),
      ]);
      expect([201, 403]).toContain(created);
      expect(await liveKeys(org, member)).toEqual([]);
    }
  });
});
