import { STATUS_CODES } from "node:http";
import { connect } from "node:net";
import { isWellFormedKey, PERMISSIONS } from "@keyledger/domain";
import fc from "fast-check";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { INTERNAL_TOKEN, type RunningApi, startApi, uniqueId } from "../support/api-harness";

/**
 * HTTP fuzz: hostile and valid requests, generated from a fixed seed (FUZZ_SEED to vary it), sent concurrently
 * with app.inject (the full fastify pipeline: routing, parsing, hooks, handlers, the real database). Every
 * response must be a 4xx with exactly Daytona's error body or a correct 2xx; never a 5xx; and a request answered
 * 4xx must not have written any event (events carry the request id).
 */

const SEED = Number(process.env.FUZZ_SEED ?? 8_2026);
const REQUESTS = Number(process.env.FUZZ_REQUESTS ?? 10_000);
const CONCURRENCY = 16;
const BODY_LIMIT = 16_384;

type Credential = {
  label: string;
  authorization: string | undefined;
  /** Who a 2xx may be for: the credential's user and the organizations it may act in; null if it must never 2xx. */
  principal: { userId: string; organizations: string[]; ownerOf: string[] } | null;
  kind: "jwt" | "api_key" | "internal" | "none";
};

type FuzzRequest = {
  method: string;
  url: string;
  headers: Record<string, string | string[]>;
  payload?: string | Buffer;
  credential: Credential;
  /** The create body's name, when the request is a well-formed create. */
  intent: string;
};

type Outcome = { request: FuzzRequest; requestId: string; status: number; body: string };

const ERROR_KEYS = ["error", "message", "path", "statusCode", "timestamp"];

function base64url(value: string | object): string {
  return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

// Names and path segments that have broken services before.
const HOSTILE_STRINGS = [
  "",
  " ",
  "/",
  "a/b",
  "%2F",
  "a%2Fb",
  "..",
  "../..",
  "%2e%2e",
  "..%2F..%2Fetc%2Fpasswd",
  "' OR '1'='1",
  "'; DROP TABLE events; --",
  '"; DELETE FROM api_keys; --',
  "\\",
  "%",
  "%zz",
  "%00",
  "\u0000",
  "a\u0000b",
  "\n",
  "\r\nX-Injected: 1",
  "\t",
  "\u007f",
  "\u0085",
  "\u2028",
  "\u202e",
  "\u200b",
  "\ufeff",
  "\ud800",
  "\udfff",
  "a\ud83d",
  "😀",
  "👩‍👩‍👧‍👦",
  "Ω≈ç√∫˜µ≤≥÷",
  "田中さんにあげて下さい",
  "مرحبا",
  "<script>alert(1)</script>",
  "https://evil.example",
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a log4shell-style string, literally
  "${jndi:ldap://x}",
  "{{7*7}}",
  "__proto__",
  "constructor",
  "null",
  "undefined",
  "NaN",
  "current",
  "rotate",
  "x".repeat(255),
  "x".repeat(256),
  "y".repeat(5000),
];

const ODD_DATES: unknown[] = [
  "2024-02-30",
  "2099-02-29",
  "2099-13-01",
  "2099-12-31T24:00:00Z",
  "9999-12-31T23:59:59.999Z",
  "+275760-09-13T00:00:00.000Z",
  "-000001-01-01T00:00:00Z",
  "0000-01-01",
  "1970-01-01T00:00:00Z",
  "2000-01-01",
  "2099-01-01T00:00:00+25:00",
  "2099-01-01T00:00:00.1234567891Z",
  "2099-01-01 00:00:00",
  "tomorrow",
  "",
  " ",
  0,
  -1,
  1e21,
  4102444800000,
  true,
  [],
  {},
  { $date: "2099-01-01" },
  "2099-01-01T00:00:00Z",
  null,
];

function hostileString(): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...HOSTILE_STRINGS) },
    { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
    { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 40 }) },
    { weight: 1, arbitrary: fc.string({ unit: "grapheme", maxLength: 20 }) },
    { weight: 3, arbitrary: fc.stringMatching(/^[a-z][a-z0-9 _.-]{0,30}$/) },
  );
}

function nested(depth: number, leaf: string): string {
  return "[".repeat(depth) + leaf + "]".repeat(depth);
}

describe("HTTP fuzz", () => {
  let api: RunningApi;
  const orgA = uniqueId("fuzz-org-a");
  const orgB = uniqueId("fuzz-org-b");
  const scratchOrg = uniqueId("fuzz-org-scratch");
  const ownerA = uniqueId("owner-a");
  const memberA = uniqueId("member-a");
  const ownerB = uniqueId("owner-b");
  const outsider = uniqueId("outsider");
  const memberPermissions = ["write:sandboxes", "read:volumes"];
  const credentials: Credential[] = [];
  const fixtureNames: string[] = [];
  const apiKeyOwners = new Map<string, { userId: string; organizationId: string }>();

  beforeAll(async () => {
    api = await startApi({ keyUsedThrottleMs: 3_600_000 });
    await api.setMember(orgA, ownerA, "owner");
    await api.setMember(orgA, memberA, "member", memberPermissions);
    await api.setMember(orgB, ownerB, "owner");
    const { issuer } = api;

    const create = async (userId: string, org: string, name: string, permissions: string[]) => {
      const res = await api.app.inject({
        method: "POST",
        url: "/api/api-keys",
        headers: await api.jwtHeaders(userId, org),
        payload: { name, permissions },
      });
      if (res.statusCode !== 201) throw new Error(`fixture key: ${res.statusCode} ${res.body}`);
      const value = (res.json() as { value: string }).value;
      apiKeyOwners.set(value, { userId, organizationId: org });
      return value;
    };
    const keys: Credential[] = [];
    for (let i = 0; i < 4; i++) {
      fixtureNames.push(`fixture-${i}`);
      for (const [user, org, permissions] of [
        [ownerA, orgA, ["write:sandboxes", "delete:sandboxes"]],
        [memberA, orgA, ["write:sandboxes"]],
        [ownerB, orgB, []],
      ] as const) {
        const value = await create(user, org, `fixture-${i}`, [...permissions]);
        keys.push({
          label: `api key of ${user}`,
          authorization: `Bearer ${value}`,
          principal: { userId: user, organizations: [org], ownerOf: [] },
          kind: "api_key",
        });
      }
    }
    const revoked = await create(ownerA, orgA, "revoked-fixture", []);
    await api.app.inject({
      method: "DELETE",
      url: "/api/api-keys/revoked-fixture",
      headers: await api.jwtHeaders(ownerA, orgA),
    });

    const jwt = async (
      label: string,
      userId: string | undefined,
      principal: Credential["principal"],
      options = {},
    ) => ({
      label,
      authorization: `Bearer ${await issuer.token(userId === undefined ? {} : { sub: userId }, options)}`,
      principal,
      kind: "jwt" as const,
    });
    const realA = await issuer.token({ sub: ownerA });
    const [h, p, s] = realA.split(".") as [string, string, string];
    const tamperedPayload = base64url({ ...JSON.parse(Buffer.from(p, "base64url").toString()), sub: ownerB });
    const noneToken = `${base64url({ alg: "none", typ: "JWT" })}.${base64url({ sub: ownerA, iss: issuer.issuer, aud: issuer.audience, exp: 4102444800 })}`;
    const expired = Math.floor(Date.now() / 1000) - 3600;

    credentials.push(
      // Valid: owner and member of A, owner of B (JWT, RS256 and ES256), and their API keys.
      await jwt("owner A", ownerA, { userId: ownerA, organizations: [orgA], ownerOf: [orgA] }),
      await jwt(
        "owner A (ES256)",
        ownerA,
        { userId: ownerA, organizations: [orgA], ownerOf: [orgA] },
        { alg: "ES256" },
      ),
      await jwt("member A", memberA, { userId: memberA, organizations: [orgA], ownerOf: [] }),
      await jwt("owner B", ownerB, { userId: ownerB, organizations: [orgB], ownerOf: [orgB] }),
      ...keys,
      // Valid tokens of people with no membership in the organizations they name.
      await jwt("outsider", outsider, { userId: outsider, organizations: [], ownerOf: [] }),
      // Forged or unusable.
      await jwt("foreign key", ownerA, null, { foreignKey: true }),
      await jwt("wrong issuer", ownerA, null, { issuer: "https://evil.example/" }),
      await jwt("wrong audience", ownerA, null, { audience: "someone-else" }),
      await jwt("expired", ownerA, null, { expiresIn: expired }),
      await jwt("no sub", undefined, null),
      await jwt("empty sub", "", null),
      { label: "alg none", authorization: `Bearer ${noneToken}.`, principal: null, kind: "jwt" },
      { label: "alg none, fake sig", authorization: `Bearer ${noneToken}.AAAA`, principal: null, kind: "jwt" },
      { label: "tampered payload", authorization: `Bearer ${h}.${tamperedPayload}.${s}`, principal: null, kind: "jwt" },
      {
        label: "HS256 with public data",
        authorization: `Bearer ${base64url({ alg: "HS256", kid: "rsa-1" })}.${p}.${base64url("x".repeat(32))}`,
        principal: null,
        kind: "jwt",
      },
      { label: "jwt + garbage", authorization: `Bearer ${realA}x`, principal: null, kind: "jwt" },
      { label: "revoked key", authorization: `Bearer ${revoked}`, principal: null, kind: "api_key" },
      {
        label: "unknown well-formed key",
        authorization: `Bearer dtn_${"ab".repeat(28)}${"0".repeat(8)}`,
        principal: null,
        kind: "api_key",
      },
      {
        label: "bad checksum key",
        authorization: `Bearer ${revoked.slice(0, -1)}${revoked.endsWith("0") ? "1" : "0"}`,
        principal: null,
        kind: "api_key",
      },
      {
        label: "key in basic",
        authorization: `Basic ${Buffer.from(`x:${revoked}`).toString("base64")}`,
        principal: null,
        kind: "api_key",
      },
      { label: "empty bearer", authorization: "Bearer ", principal: null, kind: "none" },
      { label: "two tokens", authorization: `Bearer ${realA} ${realA}`, principal: null, kind: "none" },
      { label: "huge token", authorization: `Bearer ${"a".repeat(12_000)}`, principal: null, kind: "none" },
      {
        label: "huge jwt-shaped",
        authorization: `Bearer ${"a".repeat(4000)}.${"b".repeat(4000)}.${"c".repeat(4000)}`,
        principal: null,
        kind: "none",
      },
      { label: "no credential", authorization: undefined, principal: null, kind: "none" },
      { label: "internal token", authorization: `Bearer ${INTERNAL_TOKEN}`, principal: null, kind: "internal" },
      {
        label: "internal token prefix",
        authorization: `Bearer ${INTERNAL_TOKEN.slice(0, -1)}`,
        principal: null,
        kind: "internal",
      },
    );
  });
  afterAll(() => api?.close());

  function requestArbitrary(): fc.Arbitrary<FuzzRequest> {
    const credential = fc.constantFrom(...credentials);
    const name = fc.oneof(
      { weight: 3, arbitrary: hostileString() },
      { weight: 2, arbitrary: fc.constantFrom(...fixtureNames) },
    );
    const userId = fc.constantFrom(ownerA, memberA, ownerB, outsider, "", `../${ownerA}`, `${ownerA}%00`, "*");
    const segment = fc.oneof(
      { weight: 5, arbitrary: name.map((n) => encodeURIComponent(n.replace(/[\ud800-\udfff]/g, "\ufffd"))) },
      { weight: 2, arbitrary: name.map((n) => n.replace(/[?#\s]/g, "")) }, // raw: may add slashes or dots
      { weight: 1, arbitrary: fc.constantFrom("%ED%A0%80", "%C0%AF", "%FF", "%", "%2", "%00", "..%2F", "%252F") },
    );
    const orgHeader = fc.option(
      fc.constantFrom(
        orgA,
        orgB,
        scratchOrg,
        "nonexistent",
        "",
        " ",
        `${orgA} `,
        orgA.toUpperCase(),
        "x".repeat(300),
        "' OR 1=1 --",
        "caf\u00e9",
        "*",
      ),
      { nil: undefined, freq: 3 },
    );
    const path = fc.oneof(
      { weight: 6, arbitrary: fc.constant("/api/api-keys") },
      { weight: 3, arbitrary: fc.constant("/api/api-keys/current") },
      { weight: 4, arbitrary: segment.map((s) => `/api/api-keys/${s}`) },
      {
        weight: 3,
        arbitrary: fc.tuple(userId, segment).map(([u, s]) => `/api/api-keys/${encodeURIComponent(u)}/${s}`),
      },
      { weight: 2, arbitrary: segment.map((s) => `/api/api-keys/${s}/rotate`) },
      {
        weight: 1,
        arbitrary: fc.tuple(userId, segment).map(([u, s]) => `/api/api-keys/${encodeURIComponent(u)}/${s}/rotate`),
      },
      { weight: 1, arbitrary: fc.constant("/api/api-keys/current/rotate") },
      {
        weight: 1,
        arbitrary: fc
          // Never the fixture organizations: a valid internal token may change memberships.
          .tuple(fc.constantFrom(scratchOrg, "%00", "..", "%2e%2e", ""), userId)
          .map(([o, u]) => `/internal/organizations/${o}/members/${encodeURIComponent(u)}`),
      },
      {
        weight: 1,
        arbitrary: fc.constantFrom(
          "/health/live",
          "/health/ready",
          "/",
          "/api",
          "/api/",
          "/api//api-keys",
          "/API/API-KEYS",
          "/api/api-keys?x=1&x=2",
          "/api/api-keys/?",
          "/api/api-keys#frag",
        ),
      },
    );
    const method = fc.oneof(
      { weight: 8, arbitrary: fc.constantFrom("GET", "POST", "DELETE") },
      { weight: 1, arbitrary: fc.constantFrom("PUT", "PATCH", "HEAD", "OPTIONS") },
    );
    const permissions = fc.oneof(
      { weight: 3, arbitrary: fc.subarray([...PERMISSIONS]) },
      {
        weight: 2,
        arbitrary: fc.array(fc.constantFrom(...PERMISSIONS, "write:sandboxes", "admin", "*", "WRITE:SANDBOXES", ""), {
          maxLength: 40,
        }),
      },
      { weight: 1, arbitrary: fc.anything({ maxDepth: 2 }) },
    );
    const createBody = fc.record(
      {
        name: fc.oneof({ weight: 6, arbitrary: name }, { weight: 1, arbitrary: fc.anything({ maxDepth: 2 }) }),
        permissions,
        expiresAt: fc.oneof(
          fc.constantFrom(...ODD_DATES),
          fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
        ),
        extra: fc.anything({ maxDepth: 1 }),
      },
      { requiredKeys: [] },
    );
    const rotateBody = fc.record(
      {
        gracePeriodSeconds: fc.oneof(
          fc.integer({ min: -10, max: 700_000 }),
          fc.constantFrom(0.5, "60", null, 1e300, -0),
        ),
        expiresAt: fc.constantFrom(...ODD_DATES),
      },
      { requiredKeys: [] },
    );
    const memberBody = fc.record(
      { role: fc.constantFrom("owner", "member", "admin", 1, null), permissions },
      { requiredKeys: [] },
    );
    const payload = fc.oneof(
      { weight: 4, arbitrary: fc.oneof(createBody, rotateBody, memberBody).map((b) => JSON.stringify(b)) },
      {
        weight: 1,
        arbitrary: fc.constantFrom(
          '{"__proto__":{"admin":true},"name":"p","permissions":[]}',
          '{"constructor":{"prototype":{"x":1}},"name":"c","permissions":[]}',
        ),
      },
      {
        weight: 2,
        arbitrary: fc.tuple(createBody, fc.nat()).map(([b, cut]) => {
          const text = JSON.stringify(b);
          return text.slice(0, cut % Math.max(1, text.length)); // truncated
        }),
      },
      { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 200 }) },
      {
        weight: 1,
        arbitrary: fc.constantFrom(
          "",
          "null",
          "[]",
          "true",
          "1",
          '"x"',
          "{",
          "}",
          "{}",
          "\ufeff{}",
          "{'name':'x'}",
          '{"name":"a","name":"b","permissions":[]}',
        ),
      },
      {
        weight: 1,
        arbitrary: fc
          .integer({ min: 100, max: 6000 })
          .map((depth) => `{"name":"deep","permissions":${nested(depth, "")}}`),
      },
      {
        weight: 1,
        arbitrary: fc.constantFrom(
          "x".repeat(BODY_LIMIT + 1),
          JSON.stringify({ name: "big", permissions: Array(5000).fill("write:sandboxes") }),
        ),
      },
    );
    const contentType = fc.option(
      fc.constantFrom(
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "APPLICATION/JSON",
        "application/json, text/plain",
      ),
      { nil: undefined, freq: 5 },
    );

    const hostile = fc
      .record({
        method,
        path,
        credential,
        orgHeader,
        payload: fc.option(payload, { nil: undefined, freq: 4 }),
        contentType,
        duplicateOrg: fc.boolean(),
        duplicateAuth: fc.boolean(),
        ownOrg: fc.boolean(),
      })
      .map(({ method, path, credential, orgHeader, payload, contentType, duplicateOrg, duplicateAuth, ownOrg }) => {
        const headers: Record<string, string | string[]> = {};
        if (credential.authorization !== undefined) {
          headers.authorization = duplicateAuth
            ? [credential.authorization, "Bearer forged"]
            : credential.authorization;
        }
        // Half the time the organization the credential belongs to, so requests get past the front door.
        const org =
          ownOrg && credential.principal?.organizations[0] ? credential.principal.organizations[0] : orgHeader;
        if (org !== undefined) headers["x-daytona-organization-id"] = duplicateOrg ? [org, orgB] : org;
        if (contentType !== undefined) headers["content-type"] = contentType;
        const hasBody = payload !== undefined && method !== "GET" && method !== "HEAD";
        return { method, url: path, headers, payload: hasBody ? payload : undefined, credential, intent: "" };
      });

    // Well-formed requests by valid credentials (with hostile names, dates and permissions inside): the 2xx paths.
    const valid = credentials.filter((c) => c.principal !== null && c.principal.organizations.length > 0);
    const wellFormed = fc
      .record({
        credential: fc.constantFrom(...valid),
        op: fc.constantFrom(
          "create",
          "create",
          "create",
          "list",
          "get",
          "delete",
          "deleteFor",
          "rotate",
          "current",
          "rotateCurrent",
        ),
        name: fc.oneof({ weight: 2, arbitrary: fc.constantFrom(...fixtureNames) }, { weight: 3, arbitrary: name }),
        userId,
        permissions: fc.oneof(
          { weight: 4, arbitrary: fc.subarray([...PERMISSIONS], { maxLength: 3 }) },
          { weight: 1, arbitrary: permissions },
        ),
        expiresAt: fc.oneof(
          { weight: 4, arbitrary: fc.constant(undefined) },
          { weight: 2, arbitrary: fc.constantFrom(...ODD_DATES) },
          {
            weight: 1,
            arbitrary: fc.integer({ min: -1e6, max: 1e10 }).map((ms) => new Date(Date.now() + ms).toISOString()),
          },
        ),
        grace: fc.option(fc.integer({ min: -1, max: 700_000 }), { nil: undefined }),
      })
      .map(({ credential, op, name, userId, permissions, expiresAt, grace }): FuzzRequest => {
        const principal = credential.principal as NonNullable<Credential["principal"]>;
        const headers: Record<string, string> = {
          authorization: credential.authorization as string,
          "x-daytona-organization-id": principal.organizations[0] as string,
          "content-type": "application/json",
        };
        const key = encodeURIComponent(name.replace(/[\ud800-\udfff]/g, "\ufffd"));
        const user = encodeURIComponent(userId === outsider ? principal.userId : userId);
        switch (op) {
          case "create":
            return {
              method: "POST",
              url: "/api/api-keys",
              headers,
              payload: JSON.stringify({ name, permissions, expiresAt }),
              credential,
              intent: name,
            };
          case "list":
            return { method: "GET", url: "/api/api-keys", headers, credential, intent: "" };
          case "get":
            return { method: "GET", url: `/api/api-keys/${key}`, headers, credential, intent: "" };
          case "delete":
            return { method: "DELETE", url: `/api/api-keys/${key}`, headers, credential, intent: "" };
          case "deleteFor":
            return { method: "DELETE", url: `/api/api-keys/${user}/${key}`, headers, credential, intent: "" };
          case "rotate":
            return {
              method: "POST",
              url: `/api/api-keys/${key}/rotate`,
              headers,
              payload: JSON.stringify({ gracePeriodSeconds: grace, expiresAt }),
              credential,
              intent: "",
            };
          case "current":
            return { method: "GET", url: "/api/api-keys/current", headers, credential, intent: "" };
          default:
            return {
              method: "POST",
              url: "/api/api-keys/current/rotate",
              headers,
              payload: JSON.stringify({ gracePeriodSeconds: grace }),
              credential,
              intent: "",
            };
        }
      });
    return fc.oneof({ weight: 3, arbitrary: hostile }, { weight: 2, arbitrary: wellFormed });
  }

  function checkOutcome(outcome: Outcome): string | null {
    const { request, status, body } = outcome;
    if (status >= 500) return `${status} ${body.slice(0, 300)}`;
    if (status >= 400) {
      if (request.method === "HEAD") return null;
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(body);
      } catch {
        return `${status} with a non-JSON body: ${body.slice(0, 100)}`;
      }
      if (JSON.stringify(Object.keys(parsed).sort()) !== JSON.stringify(ERROR_KEYS)) return `error body keys: ${body}`;
      if (parsed.statusCode !== status || parsed.error !== STATUS_CODES[status]) return `error body: ${body}`;
      if (typeof parsed.message !== "string" || typeof parsed.path !== "string") return `error body types: ${body}`;
      if (Number.isNaN(Date.parse(String(parsed.timestamp)))) return `error timestamp: ${body}`;
      if (/dtn_[0-9a-f]{20,}/.test(String(parsed.message)) || String(parsed.message).includes("eyJ")) {
        return `secret echoed in error message: ${body.slice(0, 200)}`;
      }
      return null;
    }
    if (status < 200 || status >= 300) return `unexpected status ${status}`;
    if (request.url.startsWith("/health/")) return null;
    // A 2xx must come from a credential that may act, and show nothing outside its organization.
    const principal = request.credential.principal;
    if (request.credential.kind === "internal") {
      return request.url.startsWith(`/internal/organizations/${scratchOrg}/`)
        ? null
        : `internal 2xx outside scratch: ${request.url}`;
    }
    if (principal === null) return `2xx for ${request.credential.label}`;
    const orgHeader = request.headers["x-daytona-organization-id"];
    const actingOrg = request.credential.kind === "jwt" ? orgHeader : principal.organizations[0];
    if (typeof actingOrg !== "string" || !principal.organizations.includes(actingOrg)) {
      return `2xx for ${request.credential.label} acting in ${String(actingOrg)}`;
    }
    const isOwner = principal.ownerOf.includes(actingOrg);
    if (status === 204) return body === "" ? null : `204 with a body`;
    if (request.method === "HEAD") return null;
    const parsed = JSON.parse(body) as unknown;
    const items = (Array.isArray(parsed) ? parsed : [parsed]) as Record<string, unknown>[];
    for (const item of items) {
      if ("organizationId" in item && item.organizationId !== actingOrg)
        return `other organization's key: ${body.slice(0, 200)}`;
      if ("userId" in item && item.userId !== principal.userId && !isOwner)
        return `other member's key: ${body.slice(0, 200)}`;
      if ("value" in item && status === 201 && !isWellFormedKey(item.value)) return `201 with a bad value`;
      if ("value" in item && status === 200 && !/^dtn\*{20}[0-9a-f]{3}$/.test(String(item.value)))
        return `unmasked value listed`;
      if (
        Array.isArray(item.permissions) &&
        !item.permissions.every((p) => (PERMISSIONS as readonly string[]).includes(p))
      ) {
        return `unknown permission in ${body.slice(0, 200)}`;
      }
      if (
        status === 201 &&
        principal.userId === memberA &&
        Array.isArray(item.permissions) &&
        !item.permissions.every((p) => memberPermissions.includes(p))
      ) {
        return `a member's key with more than the member has: ${body.slice(0, 200)}`;
      }
    }
    if (status === 201 && request.intent !== "" && (parsed as { name?: string }).name !== request.intent) {
      return `201 for another name: ${body.slice(0, 200)}`;
    }
    return null;
  }

  async function runAll(requests: FuzzRequest[], prefix: string): Promise<Outcome[]> {
    const outcomes: Outcome[] = [];
    let next = 0;
    const worker = async () => {
      while (next < requests.length) {
        const index = next++;
        const request = requests[index] as FuzzRequest;
        const requestId = `${prefix}-${index}`;
        const res = await api.app.inject({
          method: request.method as "GET",
          url: request.url,
          headers: { ...request.headers, "x-request-id": requestId },
          payload: request.payload,
        });
        outcomes.push({ request, requestId, status: res.statusCode, body: res.body });
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    return outcomes;
  }

  async function eventCount(): Promise<number> {
    const { rows } = await sql<{ n: number }>`SELECT count(*)::int AS n FROM events`.execute(api.db);
    return rows[0]?.n ?? 0;
  }

  /** Events written per request id (the fuzz sets x-request-id), by type. */
  async function writesByRequest(prefix: string): Promise<Map<string, string[]>> {
    const { rows } = await sql<{ request_id: string; event_type: string }>`
      SELECT metadata->>'requestId' AS request_id, event_type FROM events
       WHERE metadata->>'requestId' LIKE ${`${prefix}-%`}`.execute(api.db);
    const writes = new Map<string, string[]>();
    for (const row of rows) writes.set(row.request_id, [...(writes.get(row.request_id) ?? []), row.event_type]);
    return writes;
  }

  function summarize(outcomes: Outcome[]) {
    const byStatus: Record<number, number> = {};
    for (const o of outcomes) byStatus[o.status] = (byStatus[o.status] ?? 0) + 1;
    return byStatus;
  }

  it(`${REQUESTS} generated requests: each a 4xx with Daytona's body or a correct 2xx, no 5xx, no write on a 4xx`, async () => {
    const requests = fc.sample(requestArbitrary(), { numRuns: REQUESTS, seed: SEED });
    const before = await eventCount();
    const outcomes = await runAll(requests, "fz");
    const after = await eventCount();

    const failures = outcomes
      .map((o) => ({ o, problem: checkOutcome(o) }))
      .filter((f) => f.problem !== null)
      .map(
        ({ o, problem }) =>
          `${o.request.method} ${o.request.url.slice(0, 120)} [${o.request.credential.label}] ${JSON.stringify(o.request.payload?.slice(0, 80))} → ${problem?.slice(0, 300)}`,
      );
    const writes = await writesByRequest("fz");
    const outcomeById = new Map(outcomes.map((o) => [o.requestId, o]));
    // A 4xx writes nothing, except `KeyUsed` when a valid API key authenticated before the request failed later
    // (bad body, unknown name): the key was used, as Daytona records it.
    const writesOn4xx = [...writes].filter(([id, types]) => {
      const o = outcomeById.get(id) as Outcome;
      if (o.status < 400) return false;
      const authenticatedKey = o.request.credential.kind === "api_key" && o.request.credential.principal !== null;
      return !(authenticatedKey && types.every((t) => t === "KeyUsed"));
    });
    const attributed = [...writes.values()].reduce((n, types) => n + types.length, 0);
    const byStatus = summarize(outcomes);
    console.log(
      `fuzz seed ${SEED}: ${outcomes.length} requests, by status ${JSON.stringify(byStatus)}, ${attributed} events written`,
    );

    expect(outcomes).toHaveLength(REQUESTS);
    expect(failures.slice(0, 20)).toEqual([]);
    expect(writesOn4xx).toEqual([]);
    expect(after - before).toBe(attributed);
    expect(Object.keys(byStatus).filter((s) => Number(s) >= 500)).toEqual([]);
    // The fuzz reached the happy paths too, not only the front door.
    expect(byStatus[200] ?? 0).toBeGreaterThan(0);
    expect(byStatus[201] ?? 0).toBeGreaterThan(0);
    expect(byStatus[204] ?? 0).toBeGreaterThan(0);

    const live = await api.app.inject({ url: "/health/ready" });
    expect(live.statusCode).toBe(200);
  });

  it("requests that can only fail write nothing at all (event count unchanged)", async () => {
    const hostile = credentials.filter((c) => c.principal === null && c.kind !== "internal");
    const requests = fc
      .sample(requestArbitrary(), { numRuns: 2_000, seed: SEED + 1 })
      .map((r) => ({ ...r, credential: hostile[r.url.length % hostile.length] as Credential }))
      .map((r) => ({ ...r, headers: { ...r.headers, authorization: r.credential.authorization ?? "" } }))
      .filter((r) => !r.url.startsWith("/health/"));
    const before = await eventCount();
    const outcomes = await runAll(requests, "fzh");
    expect(await eventCount()).toBe(before);
    expect(
      outcomes
        .filter((o) => o.status < 400 || o.status >= 500)
        .map((o) => `${o.request.method} ${o.request.url.slice(0, 120)} ${o.status}`),
    ).toEqual([]);
    expect(
      outcomes
        .map(checkOutcome)
        .filter((p) => p !== null)
        .slice(0, 20)
        .map((p) => p.slice(0, 300)),
    ).toEqual([]);
  });

  it("over a real socket: duplicate and conflicting headers, bad framing; the server keeps serving", async () => {
    const { port } = new URL(api.baseUrl);
    const jwtA = (await api.jwtHeaders(ownerA, orgA)).authorization;
    const raw = (text: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = connect(Number(port), "127.0.0.1");
        let data = "";
        socket.setEncoding("latin1");
        socket.on("data", (chunk) => {
          data += chunk;
        });
        socket.on("end", () => resolve(data));
        socket.on("error", reject);
        socket.setTimeout(10_000, () => {
          socket.destroy();
          reject(new Error(`no answer to ${JSON.stringify(text.slice(0, 80))}`));
        });
        // Write without half-closing: the server answers, then closes (Connection: close or a parse error).
        socket.write(text);
      });
    const body = JSON.stringify({ name: "raw", permissions: [] });
    const cases = [
      `GET /api/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: ${jwtA}\r\nAuthorization: Bearer forged\r\nX-Daytona-Organization-ID: ${orgA}\r\nConnection: close\r\n\r\n`,
      `GET /api/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: ${jwtA}\r\nX-Daytona-Organization-ID: ${orgA}\r\nX-Daytona-Organization-ID: ${orgB}\r\nConnection: close\r\n\r\n`,
      `POST /api/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: ${jwtA}\r\nX-Daytona-Organization-ID: ${orgA}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nContent-Length: 5\r\nConnection: close\r\n\r\n${body}`,
      `POST /api/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: ${jwtA}\r\nX-Daytona-Organization-ID: ${orgA}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${body}`,
      `POST /api/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: ${jwtA}\r\nX-Daytona-Organization-ID: ${orgA}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n${body}\r\n0\r\n\r\n`,
      `GET /api/api-keys/${"a".repeat(70_000)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      `GET /api/api-keys HTTP/1.1\r\nHost: x\r\nX-Big: ${"b".repeat(20_000)}\r\nConnection: close\r\n\r\n`,
      `GET /api/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\u0000b\r\nConnection: close\r\n\r\n`,
      `GET /api/api-keys HTTP/1.1\r\nHost: x\r\nX-Daytona-Organization-ID: caf\u00e9\r\nAuthorization: ${jwtA}\r\nConnection: close\r\n\r\n`,
      `BREW /api/api-keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      // HTTP/1.1 without Host (RFC 9112 3.2): 400, and the server closes the connection itself.
      `GET /api/api-keys HTTP/1.1\r\nAuthorization: ${jwtA}\r\nX-Daytona-Organization-ID: ${orgA}\r\n\r\n`,
      "GET /api/api-keys/current HTTP/1.1\r\nAuthorization: Bearer dtn_0000\r\n\r\n",
      `GET /api/api-keys HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n`,
      "GET\r\n\r\n",
      "\u0016\u0003\u0001\u0002\u0000\u0001\u0000\u0001\u00fc\u0003\u0003",
    ];
    const before = await eventCount();
    const answers: string[] = [];
    for (let round = 0; round < 20; round++) {
      for (const text of cases) answers.push(await raw(text));
    }
    expect(await eventCount()).toBe(before);
    console.log("raw answers:", cases.map((_, i) => answers[i]?.split("\r\n")[0] ?? "(none)").join(" | "));
    for (const answer of answers) {
      // Every one is answered, with a 4xx in Daytona's body: never a 5xx, never a 2xx for an ambiguous request.
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
      expect(status, answer.slice(0, 300)).toBeGreaterThanOrEqual(400);
      expect(status, answer.slice(0, 300)).toBeLessThan(500);
      const body = JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)) as object;
      expect(Object.keys(body).sort()).toEqual(ERROR_KEYS);
      expect(body).toMatchObject({ statusCode: status, error: STATUS_CODES[status] });
    }
    const alive = await fetch(`${api.baseUrl}/health/live`);
    expect(alive.status).toBe(200);
    // HTTP/1.0 has no Host requirement.
    const http10 = await raw("GET /health/live HTTP/1.0\r\n\r\n");
    expect(http10.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
  });
});
