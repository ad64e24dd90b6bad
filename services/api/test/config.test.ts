import { describe, expect, it } from "vitest";
import { parseApiConfig } from "../src/config";

describe("API configuration: NATS_URL", () => {
  it("takes comma-separated NATS servers", () => {
    expect(parseApiConfig({ NATS_URL: "nats://a:4222, b:4222" }).nats?.url).toBe("nats://a:4222, b:4222");
    expect(parseApiConfig({}).nats).toBeUndefined();
  });

  it("refuses an entry with a path (a mistyped scheme), and never echoes its credentials", () => {
    expect(() => parseApiConfig({ NATS_URL: "nats//127.0.0.1:4222" })).toThrow(
      /^NATS_URL: "nats\/\/127.0.0.1:4222" is not a NATS server URL/,
    );
    expect(() => parseApiConfig({ NATS_URL: "nats://alice:s3cret@nats:4222?x=1" })).toThrow(
      /^NATS_URL: "nats:\/\/\[redacted\]@nats:4222\?x=1" is not a NATS server URL/,
    );
  });
});
