import { isWellFormedKey, KEY_PREFIX } from "@keyledger/domain";
import { describe, expect, it } from "vitest";
import { newKeyValue } from "../src/key-values";

describe("newKeyValue", () => {
  it("gives well-formed, distinct values across many draws of the pool", () => {
    const values = Array.from({ length: 1_000 }, () => newKeyValue());
    for (const value of values) {
      expect(value.startsWith(KEY_PREFIX)).toBe(true);
      expect(isWellFormedKey(value)).toBe(true);
    }
    expect(new Set(values).size).toBe(values.length);
    // No two values share their first 8 random bytes (a pool served twice, or zeroed, would repeat them).
    const windows = new Set(values.map((value) => value.slice(4, 20)));
    expect(windows.size).toBe(values.length);
    expect(values.some((value) => value.slice(4, 60) === "0".repeat(56))).toBe(false);
  });
});
