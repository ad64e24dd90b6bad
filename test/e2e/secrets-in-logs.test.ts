import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { LOG_REDACTIONS } from "@keyledger/api";
import { describe, expect, it } from "vitest";
import { startApi, uniqueId } from "../support/api-harness";
import { type ApiKeyResponseJson, apiKeysClient, asJson } from "../support/daytona-client";

describe("secrets never reach a log line", () => {
  it("at trace level, with the service's redaction, no key value or JWT appears in any log line", async () => {
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk, _encoding, done) {
        lines.push(...String(chunk).split("\n").filter(Boolean));
        done();
      },
    });
    // The logger settings of services/api/src/main.ts, at the most verbose level.
    const api = await startApi({
      keyUsedThrottleMs: 0,
      logger: { level: "trace", stream, redact: { paths: LOG_REDACTIONS, censor: "[redacted]" } },
    });
    const secrets: string[] = [];
    try {
      const org = uniqueId("org");
      const user = uniqueId("user");
      await api.setMember(org, user, "owner");
      const jwt = await api.issuer.token({ sub: user });
      secrets.push(jwt);
      const client = apiKeysClient(api.baseUrl, jwt);
      const key = asJson<ApiKeyResponseJson>(
        (await client.createApiKey({ name: "logged", permissions: ["read:volumes"] }, org)).data,
      );
      secrets.push(key.value);
      const keyClient = apiKeysClient(api.baseUrl, key.value);
      await keyClient.getCurrentApiKey();
      await keyClient.listApiKeys(org).catch(() => {});
      await client.getCurrentApiKey(org).catch(() => {});
      // Rejected credentials are secrets too: a mistyped key, a forged or expired JWT.
      const mistyped = `${key.value.slice(0, -1)}${key.value.endsWith("0") ? "1" : "0"}`;
      const expired = await api.issuer.token({ sub: user }, { expiresIn: Math.floor(Date.now() / 1000) - 60 });
      const foreign = await api.issuer.token({ sub: user }, { foreignKey: true });
      secrets.push(mistyped, expired, foreign);
      for (const token of [mistyped, expired, foreign]) {
        await apiKeysClient(api.baseUrl, token)
          .listApiKeys(org)
          .catch(() => {});
        await apiKeysClient(api.baseUrl, token)
          .getCurrentApiKey()
          .catch(() => {});
      }
      // A key value sent where it does not belong: in the body and in the path.
      await fetch(`${api.baseUrl}/api/api-keys`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${jwt}`,
          "x-daytona-organization-id": org,
          "content-type": "application/json",
        },
        body: JSON.stringify({ name: 1, permissions: [], value: key.value, token: key.value }),
      });
      await client.deleteApiKey("logged", org);
      await keyClient.getCurrentApiKey().catch(() => {});
      await sleep(100);
    } finally {
      await api.close();
    }
    expect(lines.length).toBeGreaterThan(10);
    const text = lines.join("\n");
    for (const secret of secrets) {
      expect(text.includes(secret)).toBe(false);
      // Not even the signature or the random part on its own.
      const part = secret.startsWith("dtn_") ? secret.slice(4, 60) : (secret.split(".")[2] as string);
      expect(text.includes(part)).toBe(false);
    }
  });
});
