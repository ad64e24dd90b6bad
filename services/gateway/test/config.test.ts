import { describe, expect, it } from "vitest";
import { parseGatewayConfig } from "../src/index";

describe("gateway configuration: NATS_URL", () => {
  const base = { API_URL: "http://api:3000", UPSTREAM_URL: "http://up:80" };

  it("takes NATS servers as the API does: nats, tls, ws, wss or host:port, comma-separated", () => {
    for (const natsUrl of ["nats://nats:4222", "tls://nats:4222", "nats:4222", "nats://a:4222, nats://b:4222"]) {
      expect(parseGatewayConfig({ ...base, NATS_URL: natsUrl }).natsUrl).toBe(natsUrl);
    }
    expect(parseGatewayConfig(base).natsUrl).toBeUndefined();
  });

  it("refuses what is not a NATS server, naming the variable, without echoing credentials", () => {
    expect(() => parseGatewayConfig({ ...base, NATS_URL: "http://nats:4222" })).toThrow(
      /^NATS_URL: "http:\/\/nats:4222" is not a NATS server URL/,
    );
    // The missing ":" makes this the host "nats" with a path: the gateway would retry a wrong host for ever.
    expect(() => parseGatewayConfig({ ...base, NATS_URL: "nats//127.0.0.1:4222" })).toThrow(/^NATS_URL: /);
    expect(() => parseGatewayConfig({ ...base, NATS_URL: "nats://a:4222,nats://b:x" })).toThrow(/"nats:\/\/b:x"/);
    let message = "";
    try {
      parseGatewayConfig({ ...base, NATS_URL: "nats://alice:s3cret@nats:4222/path" });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/^NATS_URL: "nats:\/\/\[redacted\]@nats:4222\/path" is not a NATS server URL/);
  });
});

describe("gateway configuration: UPSTREAM_URL and API_URL", () => {
  it("take an origin, with or without the trailing slash", () => {
    const config = parseGatewayConfig({ API_URL: "https://api.example.com/", UPSTREAM_URL: "http://up:8000" });
    expect(config.apiUrl).toBe("https://api.example.com/");
    expect(config.upstreamUrl).toBe("http://up:8000");
  });

  it("refuse a path or query, which the gateway would drop (requests keep their own path; the API is at /api/…)", () => {
    expect(() => parseGatewayConfig({ API_URL: "http://api:3000", UPSTREAM_URL: "http://up:8000/v1" })).toThrow(
      /^UPSTREAM_URL: must be an origin such as http:\/\/host:port \(no path or query\), got "http:\/\/up:8000\/v1"/,
    );
    expect(() => parseGatewayConfig({ API_URL: "http://api:3000/keyledger", UPSTREAM_URL: "http://up:8000" })).toThrow(
      /^API_URL: must be an origin/,
    );
    expect(() => parseGatewayConfig({ API_URL: "http://api:3000/?x=1", UPSTREAM_URL: "http://up:8000" })).toThrow(
      /^API_URL: must be an origin/,
    );
  });
});

describe("gateway configuration: GATEWAY_MODE and UPSTREAM_URL", () => {
  it("refuses UPSTREAM_URL in forward-auth mode, where it would be ignored and nothing forwarded", () => {
    expect(() =>
      parseGatewayConfig({ API_URL: "http://api:3000", GATEWAY_MODE: "forward-auth", UPSTREAM_URL: "http://up:80" }),
    ).toThrow(/^UPSTREAM_URL: must be unset with GATEWAY_MODE=forward-auth/);
    expect(parseGatewayConfig({ API_URL: "http://api:3000", GATEWAY_MODE: "forward-auth" }).mode).toBe("forward-auth");
  });
});

describe("gateway configuration: UPSTREAM_AUTHORIZATION", () => {
  const base = { API_URL: "http://api:3000", UPSTREAM_URL: "http://up:80" };

  it("keeps the client's key at the gateway unless told to forward it", () => {
    expect(parseGatewayConfig(base).forwardAuthorization).toBe(false);
    expect(parseGatewayConfig({ ...base, UPSTREAM_AUTHORIZATION: "strip" }).forwardAuthorization).toBe(false);
    expect(parseGatewayConfig({ ...base, UPSTREAM_AUTHORIZATION: "forward" }).forwardAuthorization).toBe(true);
  });

  it("refuses other values, and the setting in forward-auth mode, naming the variable", () => {
    expect(() => parseGatewayConfig({ ...base, UPSTREAM_AUTHORIZATION: "yes" })).toThrow(
      /^UPSTREAM_AUTHORIZATION: must be "strip" or "forward", got "yes"/,
    );
    expect(() =>
      parseGatewayConfig({
        API_URL: "http://api:3000",
        GATEWAY_MODE: "forward-auth",
        UPSTREAM_AUTHORIZATION: "forward",
      }),
    ).toThrow(/^UPSTREAM_AUTHORIZATION: must be unset with GATEWAY_MODE=forward-auth/);
  });
});

describe("gateway configuration errors", () => {
  const base = { API_URL: "http://api:3000", UPSTREAM_URL: "http://up:80" };

  it("name the value out of range, as the API's do", () => {
    expect(() => parseGatewayConfig({ ...base, UPSTREAM_PIPELINING: "101" })).toThrow(
      /^UPSTREAM_PIPELINING: must be between 1 and 100, got 101$/,
    );
    expect(() => parseGatewayConfig({ ...base, PORT: "70000" })).toThrow(
      /^PORT: must be between 0 and 65535, got 70000$/,
    );
    expect(() => parseGatewayConfig({ ...base, UPSTREAM_TIMEOUT_MS: "5" })).toThrow(
      /^UPSTREAM_TIMEOUT_MS: must be between 100 and 3600000, got 5$/,
    );
  });

  it("never echo a URL's credentials", () => {
    let message = "";
    try {
      parseGatewayConfig({ API_URL: "http://api:3000", UPSTREAM_URL: "http://admin:s3cret@up:8000/v1" });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toBe(
      'UPSTREAM_URL: must be an origin such as http://host:port (no path or query), got "http://redacted@up:8000/v1"',
    );
  });
});
