import { createHash } from "node:crypto";

/**
 * Key value: `dtn_` + 64 lowercase hex characters. The first 56 hex characters are random (224 bits);
 * the last 8 are the CRC32 of everything before them, so a typo or a made-up key is rejected offline.
 */
export const KEY_PREFIX = "dtn_";
export const KEY_RANDOM_BYTES = 28;
const KEY_PATTERN = /^dtn_[0-9a-f]{64}$/;

const CRC32_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (IEEE 802.3, the zlib one) of an ASCII string. */
export function crc32(text: string): number {
  let crc = 0xffffffff;
  for (let i = 0; i < text.length; i++) {
    crc = (CRC32_TABLE[(crc ^ text.charCodeAt(i)) & 0xff] as number) ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

function checksumHex(body: string): string {
  return crc32(body).toString(16).padStart(8, "0");
}

/** Builds a key value from 28 random bytes (the caller supplies them: the domain does no I/O). */
export function keyValueFromRandomBytes(randomBytes: Uint8Array): string {
  if (randomBytes.length !== KEY_RANDOM_BYTES) {
    throw new RangeError(`a key needs exactly ${KEY_RANDOM_BYTES} random bytes`);
  }
  const body = KEY_PREFIX + Buffer.from(randomBytes).toString("hex");
  return body + checksumHex(body);
}

/** True when the value has the key shape and its checksum matches. No database needed. */
export function isWellFormedKey(value: unknown): value is string {
  if (typeof value !== "string" || !KEY_PATTERN.test(value)) return false;
  return checksumHex(value.slice(0, -8)) === value.slice(-8);
}

/** The only form in which a key is stored: SHA-256 hex of the full value. */
export function hashKeyValue(value: string): string {
  return createHash("sha256").update(value).digest("hex");
}

/** First 3 characters, 20 asterisks, last 3 characters: `dtn********************a1f`. */
export function maskKeyValue(value: string): string {
  return `${value.slice(0, 3)}${"*".repeat(20)}${value.slice(-3)}`;
}
