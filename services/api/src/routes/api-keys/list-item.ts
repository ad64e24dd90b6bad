import { maskKeyValue } from "@keyledger/domain";
import type { ApiKeyRow } from "../../read-model-queries";
import type { ApiKeyListItem } from "./schemas";

/** A key as Daytona lists it: the masked value (never the secret), times as ISO strings. */
export function toApiKeyListItem(row: ApiKeyRow): ApiKeyListItem {
  return {
    name: row.name,
    value: row.masked_value,
    createdAt: row.created_at.toISOString(),
    permissions: row.permissions as ApiKeyListItem["permissions"],
    lastUsedAt: row.last_used_at ? row.last_used_at.toISOString() : null,
    expiresAt: row.expires_at ? row.expires_at.toISOString() : null,
    userId: row.user_id,
    organizationId: row.organization_id,
  };
}

/**
 * `GET /api/api-keys/current`'s body, serialized once per cached row and presented value: the verifier keeps the
 * row while nothing changes it (a change, `KeyUsed` included, replaces the row), and the same caller asks again and
 * again. During a rotation grace period the old value is described as itself: its own masked value, and its expiry
 * when its grace ends, not the new value's.
 */
const currentKeyBodies = new WeakMap<ApiKeyRow, { keyHash: string; body: string }>();
export function currentKeyBody(
  row: ApiKeyRow,
  keyHash: string,
  validUntil: Date | null,
  presentedValue: string,
): string {
  const memo = currentKeyBodies.get(row);
  if (memo !== undefined && memo.keyHash === keyHash) return memo.body;
  const body = JSON.stringify({
    ...toApiKeyListItem(row),
    value: keyHash === row.key_hash ? row.masked_value : maskKeyValue(presentedValue),
    expiresAt: validUntil ? validUntil.toISOString() : null,
  });
  currentKeyBodies.set(row, { keyHash, body });
  return body;
}
