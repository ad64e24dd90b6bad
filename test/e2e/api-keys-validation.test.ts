import { PERMISSIONS } from "@keyledger/domain";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { eventsOfOrganization } from "../support/database";
import { expectErrorBody, expectFetchError } from "../support/daytona-client";

const PERMISSION_MESSAGE = `each value in permissions must be one of the following values: ${PERMISSIONS.join(", ")}`;

describe("POST /api/api-keys validation (400, nothing written)", () => {
  let api: RunningApi;
  let org: string;
  let headers: Record<string, string>;
  beforeAll(async () => {
    api = await startApi();
    org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "owner");
    headers = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
  });
  afterAll(async () => {
    await api.close();
  });

  const post = (body: unknown, extraHeaders: Record<string, string> = {}) =>
    fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers: { ...headers, ...extraHeaders },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });

  /** Posts `body`, expects 400 whose message contains every one of `messages`, and that no event was written. */
  async function expectRejected(body: unknown, messages: string[]) {
    const before = (await eventsOfOrganization(api.db, org)).length;
    const error = await expectFetchError(post(body), 400, undefined, "/api/api-keys");
    for (const message of messages) expect(error.message, JSON.stringify(body)).toContain(message);
    expect((await eventsOfOrganization(api.db, org)).length).toBe(before);
    return error;
  }

  it("an empty body names every missing field", async () => {
    const error = await expectRejected({}, [
      "name should not be empty",
      "name must be a string",
      "permissions must be an array",
    ]);
    expect(error.message).not.toContain("expiresAt");
  });

  it("name: missing, null, empty, blank, or not a string", async () => {
    await expectRejected({ permissions: [] }, ["name should not be empty", "name must be a string"]);
    await expectRejected({ name: null, permissions: [] }, ["name should not be empty", "name must be a string"]);
    await expectRejected({ name: "", permissions: [] }, ["name should not be empty"]);
    await expectRejected({ name: "   ", permissions: [] }, ["name should not be empty"]);
    for (const name of [123, true, ["a"], { a: 1 }]) {
      const error = await expectRejected({ name, permissions: [] }, ["name must be a string"]);
      expect(error.message).not.toContain("should not be empty");
    }
  });

  it("permissions: missing, not an array, or with a value outside the enum", async () => {
    await expectRejected({ name: "k" }, ["permissions must be an array"]);
    await expectRejected({ name: "k", permissions: "write:sandboxes" }, ["permissions must be an array"]);
    await expectRejected({ name: "k", permissions: null }, ["permissions must be an array"]);
    await expectRejected({ name: "k", permissions: { 0: "write:sandboxes" } }, ["permissions must be an array"]);
    const error = await expectRejected({ name: "k", permissions: ["write:sandboxes", "manage:api_keys"] }, [
      PERMISSION_MESSAGE,
    ]);
    expect(error.message).toBe(PERMISSION_MESSAGE);
    await expectRejected({ name: "k", permissions: [1] }, [PERMISSION_MESSAGE]);
    await expectRejected({ name: "k", permissions: ["WRITE:SANDBOXES"] }, [PERMISSION_MESSAGE]);
  });

  it("expiresAt: not a date → 'expiresAt must be a Date instance'", async () => {
    for (const expiresAt of ["tomorrow", "2030-13-45T00:00:00Z", 1_900_000_000_000, true, {}, ["2030-01-01"], ""]) {
      await expectRejected({ name: "k", permissions: [], expiresAt }, ["expiresAt must be a Date instance"]);
    }
  });

  it("expiresAt: a date that does not exist → 400, not rolled over into the next month", async () => {
    for (const expiresAt of [
      "2030-02-30T00:00:00Z",
      "2031-02-29",
      "2031-04-31T12:00:00Z",
      "2030-01-01T24:00:00Z",
      "2030-01-01T12:60:00Z",
      "2030-01-01T00:00:00+25:00",
    ]) {
      await expectRejected({ name: "k", permissions: [], expiresAt }, ["expiresAt must be a Date instance"]);
    }
    const leapDay = await post({ name: "leap-day", permissions: [], expiresAt: "2032-02-29T00:00:00Z" });
    expect(leapDay.status).toBe(201);
    expect(((await leapDay.json()) as { expiresAt: string }).expiresAt).toBe("2032-02-29T00:00:00.000Z");
  });

  it("expiresAt without a zone is UTC, whatever the server's time zone", async () => {
    const zone = process.env.TZ;
    process.env.TZ = "America/New_York"; // the API runs in this process
    try {
      const res = await post({ name: "zoneless", permissions: [], expiresAt: "2031-01-01T10:00" });
      expect(res.status).toBe(201);
      expect(((await res.json()) as { expiresAt: string }).expiresAt).toBe("2031-01-01T10:00:00.000Z");
    } finally {
      if (zone === undefined) delete process.env.TZ;
      else process.env.TZ = zone;
    }
  });

  it("expiresAt after year 9999 (also by its offset) → 400; the last millisecond of 9999 → 201", async () => {
    for (const expiresAt of ["9999-12-31T23:59:59-01:00", "9999-12-31T23:30:00-00:45"]) {
      await expectRejected({ name: "k", permissions: [], expiresAt }, [
        "expiresAt must not be later than 9999-12-31T23:59:59.999Z",
      ]);
    }
    const last = await post({ name: "far-future", permissions: [], expiresAt: "9999-12-31T23:59:59.999Z" });
    expect(last.status).toBe(201);
    expect(((await last.json()) as { expiresAt: string }).expiresAt).toBe("9999-12-31T23:59:59.999Z");
  });

  it('the name "current" → 400: /api/api-keys/current is the presented key\'s own route', async () => {
    await expectRejected({ name: "current", permissions: [] }, ['name must not be "current"']);
    expect((await post({ name: "Current", permissions: [] })).status).toBe(201);
  });

  it("expiresAt in the past or now → 400", async () => {
    await expectRejected({ name: "k", permissions: [], expiresAt: "2020-01-01T00:00:00.000Z" }, ["expiresAt"]);
    await expectRejected({ name: "k", permissions: [], expiresAt: new Date(Date.now() - 1000).toISOString() }, [
      "expiresAt",
    ]);
  });

  it("names with HTML tags, URLs or control characters → 400", async () => {
    for (const name of [
      "<script>alert(1)</script>",
      "<b>bold</b>",
      "a<img src=x onerror=alert(1)>",
      "see https://evil.example/path",
      "http://x.y",
      "www.evil.com",
      "ftp://files.example",
      "line\nbreak",
      "tab\there",
      "nul\u0000byte",
      "bell\u0007",
      "del\u007f",
      "c1\u0085control",
      "line\u2028separator",
      // Rejected by Daytona too (its IsSafeDisplayString):
      "javascript:alert(1)",
      "mailto:a@b.example",
      "data:text/html,hi",
      "call tel:+123",
      "</ b>",
    ]) {
      await expectRejected({ name, permissions: [] }, ["name must not contain HTML tags, URLs, or control characters"]);
    }
  });

  it("a name over 255 characters → 400; exactly 255 → 201", async () => {
    await expectRejected({ name: "x".repeat(256), permissions: [] }, ["name"]);
    await expectRejected({ name: "é".repeat(256), permissions: [] }, ["name"]);
    const ok = await post({ name: "y".repeat(255), permissions: [] });
    expect(ok.status, await ok.clone().text()).toBe(201);
  });

  it("harmless punctuation and unicode in names is accepted", async () => {
    for (const name of ["My API Key", "ci-prod_01", "clé d'accès", "ключ", "a < b", "x > y", "email@example.com"]) {
      const res = await post({ name, permissions: [] });
      expect(res.status, `${name}: ${await res.clone().text()}`).toBe(201);
    }
  });

  it("malformed JSON, a JSON array, or a non-object body → 400 with the error body", async () => {
    for (const body of ["{", "[1,2]", '"just a string"', "null", "42"]) {
      const before = (await eventsOfOrganization(api.db, org)).length;
      await expectFetchError(post(body), 400, undefined, "/api/api-keys");
      expect((await eventsOfOrganization(api.db, org)).length).toBe(before);
    }
  });

  it("a prototype-poisoning body → 400", async () => {
    await expectFetchError(post('{"name":"k","permissions":[],"__proto__":{"x":1}}'), 400);
  });

  it("a body over the limit → 413 with the error body", async () => {
    const res = await post({ name: "k", permissions: [], padding: "x".repeat(20_000) });
    const body = JSON.parse(await res.text());
    expect(res.status).toBe(413);
    expectErrorBody(body, 413);
  });

  it("a 400 comes after authentication: without credentials it is 401", async () => {
    await expectFetchError(
      fetch(`${api.baseUrl}/api/api-keys`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      }),
      401,
      "Invalid credentials",
    );
  });
});

describe("error bodies everywhere", () => {
  let api: RunningApi;
  beforeAll(async () => {
    api = await startApi();
  });
  afterAll(async () => {
    await api.close();
  });

  it("unknown routes → 404 with Daytona's error body", async () => {
    await expectFetchError(fetch(`${api.baseUrl}/api/nothing-here`), 404, undefined, "/api/nothing-here");
    await expectFetchError(fetch(`${api.baseUrl}/api/api-keys/a/b/c`), 404);
    await expectFetchError(fetch(`${api.baseUrl}/api/api-keys`, { method: "PATCH" }), 404);
  });

  it("authorization headers of the wrong scheme or shape → 401", async () => {
    for (const authorization of ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "Bearer a b"]) {
      await expectFetchError(
        fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization } }),
        401,
        "Invalid credentials",
        "/api/api-keys/current",
      );
    }
  });

  it("the error path is the request path, with its query", async () => {
    const error = await expectFetchError(fetch(`${api.baseUrl}/api/api-keys/current?x=1`), 401, "Invalid credentials");
    expect(error.path.startsWith("/api/api-keys/current")).toBe(true);
  });
});
