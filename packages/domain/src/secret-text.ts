/**
 * What counts as a secret wherever it shows up in text (a URL, an error message, a log line): API-key values, whole
 * or in part, and JWTs. Key-shaped text is redacted even when it is not a valid key or only its start (JSON.parse
 * quotes the first characters of a bad body): a fragment of a key is still part of a key.
 */
const SECRET = /dtn_[0-9a-fA-F]{4,}|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?/g;
const HAS_SECRET = new RegExp(SECRET.source);
/** A percent-encoded ASCII character (every character of a key or a JWT is ASCII). */
const ENCODED_ASCII = /%([0-7][0-9A-Fa-f])/g;

/** Whether `text` holds a secret, as is or behind percent-encoding (what `redactSecrets` would change). */
export function containsSecret(text: string): boolean {
  return redactSecrets(text) !== text;
}

/**
 * `text` with every secret replaced by `[redacted]`. A secret hidden behind percent-encoding (`dtn%5F…` in a URL
 * path decodes to a key) is found too: then the text is returned with its ASCII escapes decoded, and redacted.
 */
export function redactSecrets(text: string): string {
  const redacted = text.replace(SECRET, "[redacted]");
  if (!redacted.includes("%")) return redacted;
  const decoded = redacted.replace(ENCODED_ASCII, (_escape, hex: string) =>
    String.fromCharCode(Number.parseInt(hex, 16)),
  );
  return HAS_SECRET.test(decoded) ? decoded.replace(SECRET, "[redacted]") : redacted;
}
