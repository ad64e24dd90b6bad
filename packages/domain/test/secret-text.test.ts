import { describe, expect, it } from "vitest";
import { keyValueFromRandomBytes } from "../src/key-format";
import { redactSecrets } from "../src/secret-text";

describe("redactSecrets", () => {
  const key = keyValueFromRandomBytes(new Uint8Array(28).map((_, i) => i * 7));
  const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl";

  it("takes out keys, key fragments and JWTs, and leaves other text alone", () => {
    expect(redactSecrets(`/api/api-keys/${key}?token=${jwt}`)).toBe("/api/api-keys/[redacted]?token=[redacted]");
    expect(redactSecrets(`Unexpected token in JSON at "${key.slice(0, 10)}"`)).toBe(
      'Unexpected token in JSON at "[redacted]"',
    );
    expect(redactSecrets("/api/api-keys/my%20key")).toBe("/api/api-keys/my%20key");
    expect(redactSecrets("dtn_ is the prefix")).toBe("dtn_ is the prefix");
  });

  it("finds a key behind percent-encoding, in any case of the escapes", () => {
    const encoded = key.replace("_", "%5F");
    expect(redactSecrets(`/api/api-keys/${encoded}`)).toBe("/api/api-keys/[redacted]");
    const everyCharacter = [...key].map((c) => `%${c.charCodeAt(0).toString(16)}`).join("");
    expect(redactSecrets(`/x?k=${everyCharacter}&y=1`)).toBe("/x?k=[redacted]&y=1");
    expect(redactSecrets(`/x/${jwt.replaceAll(".", "%2e")}`)).toBe("/x/[redacted]");
    expect(redactSecrets("/x/%E2%82%AC%zz%5F")).toBe("/x/%E2%82%AC%zz%5F");
  });
});
