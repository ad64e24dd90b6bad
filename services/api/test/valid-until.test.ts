import { describe, expect, it } from "vitest";
import { type ApiKeyRow, validUntilForValue } from "../src/read-model-queries";

const T = Date.parse("2030-01-01T00:00:00.000Z");
const at = (ms: number) => new Date(T + ms);

function row(overrides: Partial<ApiKeyRow> = {}): ApiKeyRow {
  return {
    key_id: "00000000-0000-4000-8000-000000000001",
    organization_id: "org",
    user_id: "user",
    name: "k",
    key_hash: "current",
    masked_value: "dtn********************abc",
    permissions: [],
    created_at: at(-60_000),
    expires_at: null,
    last_used_at: null,
    revoked_at: null,
    revoked_reason: null,
    previous_key_hash: "previous",
    previous_valid_until: at(10_000),
    rotated_at: at(-1_000),
    ...overrides,
  };
}

describe("validUntilForValue: the instant a value stops working is exclusive, as everywhere else", () => {
  it("a rotated-out value works up to the millisecond before its grace ends, not at that instant", () => {
    expect(validUntilForValue(row(), "previous", at(9_999))).toEqual(at(10_000));
    expect(validUntilForValue(row(), "previous", at(10_000))).toBeUndefined();
    // The current value is not bound by the grace period.
    expect(validUntilForValue(row(), "current", at(10_000))).toBeNull();
  });

  it("no value outlives the key's expiry: the grace ends with it, and at that instant both values stop", () => {
    const expiring = row({ expires_at: at(5_000) });
    expect(validUntilForValue(expiring, "previous", at(4_999))).toEqual(at(5_000));
    expect(validUntilForValue(expiring, "current", at(4_999))).toEqual(at(5_000));
    expect(validUntilForValue(expiring, "previous", at(5_000))).toBeUndefined();
    expect(validUntilForValue(expiring, "current", at(5_000))).toBeUndefined();
  });

  it("a revoked key's values and a value the key never had (or no longer names) do not work", () => {
    expect(validUntilForValue(row({ revoked_at: at(0) }), "current", at(1))).toBeUndefined();
    expect(validUntilForValue(row({ revoked_at: at(0) }), "previous", at(1))).toBeUndefined();
    expect(validUntilForValue(row(), "superseded", at(1))).toBeUndefined();
  });
});
