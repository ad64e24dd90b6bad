import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { uniqueId } from "../support/api-harness";
import { freePort, testEventStream } from "../support/nats";
import { startTestIssuer, type TestIssuer } from "../support/oidc-issuer";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const INTERNAL_TOKEN = "internal-test-token-two-apis-0123";

type ApiProcess = { url: string; child: ChildProcess; output: string[] };

async function until<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** `tsx services/api/src/main.ts`, as `pnpm start` runs it, on a free port. */
async function spawnApi(env: Record<string, string>): Promise<ApiProcess> {
  const port = await freePort();
  const output: string[] = [];
  const child = spawn(`${ROOT}node_modules/.bin/tsx`, ["services/api/src/main.ts"], {
    cwd: ROOT,
    env: { ...process.env, ...env, PORT: String(port), HOST: "127.0.0.1", LOG_LEVEL: "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (chunk) => output.push(String(chunk)));
  child.stderr?.on("data", (chunk) => output.push(String(chunk)));
  const url = `http://127.0.0.1:${port}`;
  try {
    // Ready, and its API-key cache subscribed to invalidations (so it really caches).
    await until(
      async () => {
        if (child.exitCode !== null) throw new Error(`API exited: ${output.join("")}`);
        const res = await fetch(`${url}/health/ready`);
        const body = (await res.json()) as { checks?: { nats?: string } };
        return res.status === 200 && body.checks?.nats === "subscribed" ? true : undefined;
      },
      "the API process to be ready and subscribed",
      60_000,
    );
  } catch (error) {
    child.kill("SIGKILL");
    throw new Error(`${(error as Error).message}\n${output.join("")}`);
  }
  return { url, child, output };
}

async function stopApi(api: ApiProcess | undefined): Promise<void> {
  if (!api || api.child.exitCode !== null) return;
  await new Promise<void>((resolve) => {
    api.child.once("exit", () => resolve());
    api.child.kill("SIGTERM");
  });
}

describe("two API processes: a revocation through one is enforced by the other", () => {
  const stream = testEventStream();
  let issuer: TestIssuer;
  let first: ApiProcess;
  let second: ApiProcess;

  beforeAll(async () => {
    issuer = await startTestIssuer();
    const env = {
      DATABASE_URL: inject("databaseUrl"),
      OIDC_ISSUER: issuer.issuer,
      OIDC_JWKS_URL: issuer.jwksUrl,
      OIDC_AUDIENCE: issuer.audience,
      INTERNAL_API_TOKEN: INTERNAL_TOKEN,
      NATS_URL: stream.natsUrl,
      NATS_STREAM: stream.streamName,
      NATS_SUBJECT_PREFIX: stream.subjectPrefix,
      // Not consuming membership changes: that would create the shared server's ORGANIZATIONS stream.
      MEMBERSHIP_SUBJECT_PREFIX: "",
      // Far longer than the test: only an invalidation event can make a replica forget a key.
      VERIFIER_CACHE_TTL_MS: "600000",
      RATE_LIMIT_FAILED_AUTH_LIMIT: "0",
      RATE_LIMIT_AUTHENTICATED_LIMIT: "0",
    };
    [first, second] = await Promise.all([spawnApi(env), spawnApi(env)]);
  }, 120_000);
  afterAll(async () => {
    await Promise.all([stopApi(first), stopApi(second)]);
    await issuer?.close();
    await stream.cleanup();
  });

  it("caches the key on both, revokes through the first, and the second rejects it", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const member = await fetch(`${first.url}/internal/organizations/${org}/members/${user}`, {
      method: "PUT",
      headers: { authorization: `Bearer ${INTERNAL_TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify({ role: "owner", permissions: [] }),
    });
    expect(member.status).toBe(204);
    const headers = {
      authorization: `Bearer ${await issuer.token({ sub: user })}`,
      "x-daytona-organization-id": org,
      "content-type": "application/json",
    };
    const created = await fetch(`${first.url}/api/api-keys`, {
      method: "POST",
      headers,
      body: JSON.stringify({ name: "shared", permissions: [] }),
    });
    expect(created.status).toBe(201);
    const { value } = (await created.json()) as { value: string };
    const current = (api: ApiProcess) =>
      fetch(`${api.url}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } });

    for (const api of [first, second, first, second]) expect((await current(api)).status).toBe(200);

    const deletedAt = performance.now();
    const deleted = await fetch(`${first.url}/api/api-keys/shared`, { method: "DELETE", headers });
    expect(deleted.status).toBe(204);
    const answeredAt = performance.now();
    expect((await current(first)).status).toBe(401);
    let attempts = 0;
    await until(async () => {
      attempts += 1;
      const res = await current(second);
      return res.status === 401 ? true : undefined;
    }, "the second API to reject the revoked key");
    const rejectedAt = performance.now();
    const rejected = await current(second);
    expect(rejected.status).toBe(401);
    expect(rejected.headers.get("x-keyledger-key-status")).toBe("revoked");
    expect(await rejected.json()).toMatchObject({ statusCode: 401, message: "Invalid credentials" });
    console.log(
      `revocation propagation (API replica): DELETE on the first took ${(answeredAt - deletedAt).toFixed(2)} ms; ` +
        `the second rejected ${(rejectedAt - answeredAt).toFixed(2)} ms after the 204 (${attempts} request(s); ` +
        "one test run, not a benchmark)",
    );
  });

  it("a member removed through the first loses access on the second, which had their membership cached", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const setMember = (method: "PUT" | "DELETE") =>
      fetch(`${first.url}/internal/organizations/${org}/members/${user}`, {
        method,
        headers: { authorization: `Bearer ${INTERNAL_TOKEN}`, "content-type": "application/json" },
        body: method === "PUT" ? JSON.stringify({ role: "member", permissions: ["write:sandboxes"] }) : undefined,
      });
    expect((await setMember("PUT")).status).toBe(204);
    const headers = { authorization: `Bearer ${await issuer.token({ sub: user })}`, "x-daytona-organization-id": org };
    const list = (api: ApiProcess) => fetch(`${api.url}/api/api-keys`, { headers });
    // The first answers from the database and caches; so does the second once the grant has reached it.
    expect((await list(first)).status).toBe(200);
    await until(async () => ((await list(second)).status === 200 ? true : undefined), "the second to see the grant");
    expect((await list(second)).status).toBe(200);

    expect((await setMember("DELETE")).status).toBe(204);
    expect((await list(first)).status).toBe(403);
    await until(async () => ((await list(second)).status === 403 ? true : undefined), "the second to refuse");
    const refused = await list(second);
    expect(refused.status).toBe(403);
    expect(await refused.json()).toMatchObject({ statusCode: 403, message: "Invalid authentication context" });
  });
});
