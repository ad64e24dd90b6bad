import { DomainError } from "@keyledger/domain";
import { StreamVersionConflict } from "@keyledger/event-store";
import { describe, expect, it } from "vitest";
import { ApiError } from "../src/http-errors";
import { asApiError } from "../src/routes/api-keys/domain-errors";

function statusOf(error: unknown): number | undefined {
  try {
    asApiError(error);
  } catch (mapped) {
    return mapped instanceof ApiError ? mapped.statusCode : undefined;
  }
  return undefined;
}

describe("asApiError", () => {
  it("answers 409 when the stream kept changing through every retry, and maps domain refusals", () => {
    expect(statusOf(new StreamVersionConflict("api_key:org/user/name"))).toBe(409);
    expect(statusOf(new DomainError("KEY_NAME_TAKEN", "API key with this name already exists"))).toBe(409);
    expect(statusOf(new DomainError("KEY_NOT_FOUND", "API key not found"))).toBe(404);
    expect(statusOf(new Error("anything else"))).toBeUndefined();
  });
});
