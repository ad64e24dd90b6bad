/**
 * RFC 8785 JSON Canonicalization Scheme (JCS): the one serialization of a JSON value that every party hashing it
 * agrees on. Object members sorted by their names' UTF-16 code units, no whitespace, numbers in ECMAScript's
 * shortest round-trip form (`Number.prototype.toString`), strings escaped as `JSON.stringify` does (only `"`, `\`
 * and control characters; everything else as is).
 */
export function canonicalJson(value: unknown): string {
  switch (typeof value) {
    case "string":
      return canonicalString(value);
    case "number":
      if (!Number.isFinite(value)) throw new TypeError(`JCS: ${value} is not a JSON number`);
      return JSON.stringify(value); // ECMAScript Number serialization; -0 becomes "0"
    case "boolean":
      return value ? "true" : "false";
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
      const prototype = Object.getPrototypeOf(value);
      if (prototype !== Object.prototype && prototype !== null) {
        throw new TypeError(`JCS: ${prototype?.constructor?.name ?? "object"} is not plain JSON data`);
      }
      const record = value as Record<string, unknown>;
      // Array.prototype.sort without a comparator compares UTF-16 code units, as RFC 8785 §3.2.3 requires.
      const names = Object.keys(record).sort();
      const members: string[] = [];
      for (const name of names) {
        const member = record[name];
        if (member === undefined) throw new TypeError(`JCS: member "${name}" is undefined`);
        members.push(`${canonicalString(name)}:${canonicalJson(member)}`);
      }
      return `{${members.join(",")}}`;
    }
    default:
      throw new TypeError(`JCS: a ${typeof value} is not JSON data`);
  }
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function canonicalString(text: string): string {
  if (LONE_SURROGATE.test(text)) throw new TypeError("JCS: a string holds a lone surrogate (not Unicode text)");
  return JSON.stringify(text);
}
