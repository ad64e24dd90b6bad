import type { KeyLookup, LookupContext, LookupResult, VerifiedKey } from "./types";

/**
 * The header the API sets on a 401 for an API key, telling a verifier why (`not_found`, `expired`, `revoked`).
 * The body stays Daytona's `Invalid credentials`.
 */
export const KEY_STATUS_HEADER = "x-keyledger-key-status";

/**
 * The header the API sets on an API-key-authenticated response when the presented value stops working before the
 * key expires (a rotated-out value in its grace period). The verifier never caches the value past it.
 */
export const VALID_UNTIL_HEADER = "x-keyledger-valid-until";

function failureFromHeader(value: string | null): Extract<LookupResult, { valid: false }>["code"] {
  if (value === "revoked") return "REVOKED";
  if (value === "expired") return "EXPIRED";
  return "NOT_FOUND";
}

function earliest(expiresAt: string | null, validUntil: string | null): string | null {
  if (validUntil === null || Number.isNaN(Date.parse(validUntil))) return expiresAt;
  if (expiresAt === null || Date.parse(validUntil) < Date.parse(expiresAt)) return validUntil;
  return expiresAt;
}

/**
 * A lookup over HTTP: `GET <apiUrl>/api/api-keys/current` with the key as bearer and `Cache-Control: no-cache`, so
 * the API answers from its database rather than from its own verifier cache, and the client's address as
 * `X-Forwarded-For` (set `TRUST_PROXY` on the API to the gateways' addresses so its failed-auth limit is per client).
 */
export function apiLookup(apiUrl: string, options: { timeoutMs?: number } = {}): KeyLookup {
  const url = new URL("/api/api-keys/current", apiUrl).toString();
  const timeoutMs = options.timeoutMs ?? 5_000;
  return async (bearer: string, _keyHash: string, context: LookupContext) => {
    const headers: Record<string, string> = {
      authorization: `Bearer ${bearer}`,
      "cache-control": "no-cache",
      accept: "application/json",
    };
    // The API's failed-auth limit then counts the client, not the gateway, when it trusts the gateway as a proxy.
    if (context.clientIp !== undefined) headers["x-forwarded-for"] = context.clientIp;
    const response = await fetch(url, {
      headers,
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (response.status === 401) {
      await response.body?.cancel();
      return { valid: false, code: failureFromHeader(response.headers.get(KEY_STATUS_HEADER)) };
    }
    if (response.status !== 200) {
      await response.body?.cancel();
      throw new Error(`key lookup failed: HTTP ${response.status}`);
    }
    const body = (await response.json()) as Partial<VerifiedKey>;
    const validUntil = response.headers.get(VALID_UNTIL_HEADER);
    if (typeof body.name !== "string" || typeof body.userId !== "string" || typeof body.organizationId !== "string") {
      throw new Error("key lookup failed: unexpected body");
    }
    return {
      valid: true,
      key: {
        name: body.name,
        userId: body.userId,
        organizationId: body.organizationId,
        permissions: Array.isArray(body.permissions) ? body.permissions.filter((p) => typeof p === "string") : [],
        expiresAt: earliest(typeof body.expiresAt === "string" ? body.expiresAt : null, validUntil),
      },
    };
  };
}
