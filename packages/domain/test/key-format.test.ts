import { createHash, randomBytes } from "node:crypto";
import * as zlib from "node:zlib";
import { describe, expect, it } from "vitest";
import {
  crc32,
  hashKeyValue,
  isWellFormedKey,
  KEY_PREFIX,
  KEY_RANDOM_BYTES,
  keyValueFromRandomBytes,
  maskKeyValue,
} from "../src/index";

const zlibCrc32 = (zlib as { crc32?: (data: string | Uint8Array) => number }).crc32;

/** Changes the character at `index` to another lowercase hex digit. */
function withCharChanged(value: string, index: number): string {
  const current = value[index] as string;
  const replacement = current === "0" ? "1" : "0";
  return value.slice(0, index) + replacement + value.slice(index + 1);
}

describe("crc32", () => {
  it.each([
    ["", 0x00000000],
    ["a", 0xe8b7be43],
    ["abc", 0x352441c2],
    ["123456789", 0xcbf43926],
    ["The quick brown fox jumps over the lazy dog", 0x414fa339],
  ])("crc32(%j) is the IEEE/zlib value", (text, expected) => {
    expect(crc32(text)).toBe(expected);
  });

  it.runIf(zlibCrc32 !== undefined)("agrees with node:zlib crc32 on random ASCII keys", () => {
    for (let i = 0; i < 200; i++) {
      const text = `dtn_${randomBytes(1 + (i % 40)).toString("hex")}`;
      expect(crc32(text)).toBe(zlibCrc32?.(text));
    }
  });

  it("is an unsigned 32-bit integer", () => {
    for (let i = 0; i < 50; i++) {
      const value = crc32(randomBytes(16).toString("hex"));
      expect(Number.isInteger(value)).toBe(true);
      expect(value).toBeGreaterThanOrEqual(0);
      expect(value).toBeLessThan(2 ** 32);
    }
  });
});

describe("keyValueFromRandomBytes", () => {
  it("is dtn_ + the random bytes in hex + CRC32 of everything before, as 8 hex digits", () => {
    const bytes = Uint8Array.from({ length: KEY_RANDOM_BYTES }, (_, i) => i * 9);
    const value = keyValueFromRandomBytes(bytes);
    const body = `dtn_${Buffer.from(bytes).toString("hex")}`;
    expect(value).toBe(body + crc32(body).toString(16).padStart(8, "0"));
    expect(value).toMatch(/^dtn_[0-9a-f]{64}$/);
    expect(value.startsWith(KEY_PREFIX)).toBe(true);
  });

  it("pads a checksum with leading zeros to 8 characters", () => {
    // Search for random bytes whose checksum is below 0x10000000 (1 in 16), so padding matters.
    let found = false;
    for (let i = 0; i < 2000 && !found; i++) {
      const value = keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES));
      if (value[60] === "0") {
        found = true;
        expect(value).toHaveLength(68);
        expect(isWellFormedKey(value)).toBe(true);
      }
    }
    expect(found).toBe(true);
  });

  it("uses 28 random bytes (224 bits), and refuses any other length", () => {
    expect(KEY_RANDOM_BYTES).toBe(28);
    expect(() => keyValueFromRandomBytes(randomBytes(27))).toThrow(RangeError);
    expect(() => keyValueFromRandomBytes(randomBytes(29))).toThrow(RangeError);
    expect(() => keyValueFromRandomBytes(new Uint8Array(0))).toThrow(RangeError);
  });

  it("gives different values for different random bytes", () => {
    const values = new Set(Array.from({ length: 100 }, () => keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES))));
    expect(values.size).toBe(100);
  });
});

describe("isWellFormedKey", () => {
  const good = keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES));

  it("accepts a generated key", () => {
    expect(isWellFormedKey(good)).toBe(true);
  });

  it("rejects a key with any single character changed (random part or checksum)", () => {
    for (let index = KEY_PREFIX.length; index < good.length; index++) {
      expect(isWellFormedKey(withCharChanged(good, index)), `changed at ${index}`).toBe(false);
    }
  });

  it("rejects a key with two characters swapped", () => {
    const i = 10;
    if (good[i] === good[i + 1]) return;
    const swapped = good.slice(0, i) + good[i + 1] + good[i] + good.slice(i + 2);
    expect(isWellFormedKey(swapped)).toBe(false);
  });

  it("rejects a wrong prefix, even with a checksum that matches it", () => {
    const random = randomBytes(KEY_RANDOM_BYTES).toString("hex");
    for (const prefix of ["dtx_", "DTN_", "dtn-", "bb_sk_", ""]) {
      const body = prefix + random;
      const value = body + crc32(body).toString(16).padStart(8, "0");
      expect(isWellFormedKey(value), prefix).toBe(false);
    }
    expect(isWellFormedKey(`dtx_${good.slice(4)}`)).toBe(false);
  });

  it("rejects upper-case hex (the checksum is over the lower-case form)", () => {
    expect(isWellFormedKey(`dtn_${good.slice(4).toUpperCase()}`)).toBe(false);
    expect(isWellFormedKey(good.toUpperCase())).toBe(false);
  });

  it("rejects a key upper-cased before computing its checksum", () => {
    const body = `dtn_${randomBytes(KEY_RANDOM_BYTES).toString("hex").toUpperCase()}`;
    expect(isWellFormedKey(body + crc32(body).toString(16).padStart(8, "0"))).toBe(false);
  });

  it("rejects wrong lengths", () => {
    expect(isWellFormedKey(good.slice(0, -1))).toBe(false);
    expect(isWellFormedKey(`${good}0`)).toBe(false);
    expect(isWellFormedKey("dtn_")).toBe(false);
    expect(isWellFormedKey("")).toBe(false);
    // A shorter key whose checksum is right for its own body is still rejected.
    const shortBody = `dtn_${randomBytes(20).toString("hex")}`;
    expect(isWellFormedKey(shortBody + crc32(shortBody).toString(16).padStart(8, "0"))).toBe(false);
  });

  it("rejects surrounding whitespace", () => {
    expect(isWellFormedKey(` ${good}`)).toBe(false);
    expect(isWellFormedKey(`${good}\n`)).toBe(false);
  });

  it.each([[undefined], [null], [42], [{ value: "dtn_" }], [["dtn_"]], [Buffer.from("dtn_")]])(
    "rejects the non-string %j",
    (value) => {
      expect(isWellFormedKey(value)).toBe(false);
    },
  );

  it("rejects a non-string that stringifies to a good key", () => {
    expect(isWellFormedKey({ toString: () => good })).toBe(false);
    expect(isWellFormedKey(new String(good))).toBe(false);
  });
});

describe("maskKeyValue", () => {
  it("is the first 3 characters, 20 asterisks and the last 3 characters", () => {
    const value = keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES));
    const masked = maskKeyValue(value);
    expect(masked).toBe(`dtn${"*".repeat(20)}${value.slice(-3)}`);
    expect(masked).toHaveLength(26);
    expect(masked).toMatch(/^dtn\*{20}[0-9a-f]{3}$/);
  });

  it("matches the documented example", () => {
    expect(maskKeyValue(`dtn_${"0".repeat(61)}a1f`)).toBe("dtn********************a1f");
  });

  it("reveals none of the random part", () => {
    const value = keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES));
    const masked = maskKeyValue(value);
    expect(masked).not.toContain(value.slice(4, 10));
    expect(masked.replaceAll("*", "")).toBe(`dtn${value.slice(-3)}`);
  });
});

describe("hashKeyValue", () => {
  it("is SHA-256 hex of the full value", () => {
    const value = keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES));
    expect(hashKeyValue(value)).toBe(createHash("sha256").update(value).digest("hex"));
    expect(hashKeyValue(value)).toMatch(/^[0-9a-f]{64}$/);
  });

  it("matches known SHA-256 vectors", () => {
    expect(hashKeyValue("")).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(hashKeyValue("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });

  it("differs for values differing in one character", () => {
    const value = keyValueFromRandomBytes(randomBytes(KEY_RANDOM_BYTES));
    expect(hashKeyValue(value)).not.toBe(hashKeyValue(withCharChanged(value, 20)));
  });
});
