import { Type } from "@sinclair/typebox";

/**
 * User and organization ids come from the identity provider (a JWT's `sub`), the organizations service and the
 * development issuer. Postgres cannot store NUL, and half of a surrogate pair is not text (it cannot be encoded into
 * stream ids or headers), so such ids are refused at the edge (400 or 401) instead of failing in the database; other
 * control characters are refused with them.
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
const UNSTORABLE = /[\u0000-\u001f\u007f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
export const MAX_IDENTIFIER_LENGTH = 255;

/** Whether `value` can be a user or organization id: 1-255 characters of text with no control characters. */
export function isStorableIdentifier(value: string): boolean {
  return value.length > 0 && value.length <= MAX_IDENTIFIER_LENGTH && !UNSTORABLE.test(value);
}

/**
 * The TypeBox schema of such an id in a path or body. Ajv compiles patterns with the `u` flag, where a lone
 * surrogate is one code point of category `Cs`.
 */
export function identifierString() {
  return Type.String({
    minLength: 1,
    maxLength: MAX_IDENTIFIER_LENGTH,
    pattern: "^[^\\u0000-\\u001f\\u007f\\p{Cs}]*$",
    "x-error-message": `must be 1 to ${MAX_IDENTIFIER_LENGTH} characters of text without control characters`,
  });
}
