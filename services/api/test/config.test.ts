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

describe("API configuration: URLs", () => {
  it("take Postgres URLs for DATABASE_URL and http(s) URLs for OIDC_JWKS_URL and PUBLIC_URL", () => {
    const config = parseApiConfig({
      DATABASE_URL: "postgresql://keyledger:pw@db:5432/keyledger",
      OIDC_ISSUER: "https://id.example.com/",
      OIDC_JWKS_URL: "https://id.example.com/.well-known/jwks.json",
      PUBLIC_URL: "https://keys.example.com",
    });
    expect(config.databaseUrl).toBe("postgresql://keyledger:pw@db:5432/keyledger");
    expect(config.oidc?.jwksUrl).toBe("https://id.example.com/.well-known/jwks.json");
    expect(config.publicUrl).toBe("https://keys.example.com");
  });

  it("refuse a URL of another scheme, which would otherwise fail later or not at all, without echoing it", () => {
    // `localhost:5432` parses as a URL of scheme "localhost:"; pg then fails with "no PostgreSQL user name specified".
    expect(() => parseApiConfig({ DATABASE_URL: "localhost:5432" })).toThrow(
      /^DATABASE_URL: must be a Postgres URL such as postgres:\/\/user:pass@host:5432\/db$/,
    );
    expect(() => parseApiConfig({ DATABASE_URL: "mysql://root:s3cret@db/keys" })).toThrow(/^DATABASE_URL: must be/);
    // The API started with these, and every JWT was refused (JWKS unreachable) or the dev issuer's `iss` was junk.
    expect(() => parseApiConfig({ OIDC_ISSUER: "https://id", OIDC_JWKS_URL: "ftp://id/jwks.json" })).toThrow(
      /^OIDC_JWKS_URL: must be an http\(s\) URL$/,
    );
    expect(() => parseApiConfig({ PUBLIC_URL: "localhost:3000" })).toThrow(/^PUBLIC_URL: must be an http\(s\) URL$/);
  });
});

describe("API configuration: TRUST_PROXY", () => {
  it("takes addresses and CIDRs of the right width", () => {
    expect(parseApiConfig({ TRUST_PROXY: "10.0.0.0/8, fd00::/8, loopback" }).trustProxy).toBe(
      "10.0.0.0/8,fd00::/8,loopback",
    );
  });

  it("refuses an IPv4 prefix over 32 (proxy-addr threw 'invalid range on address' at start, exit 1)", () => {
    expect(() => parseApiConfig({ TRUST_PROXY: "10.0.0.0/33" })).toThrow(/^TRUST_PROXY: "10.0.0.0\/33" is not/);
    expect(() => parseApiConfig({ TRUST_PROXY: "fd00::/129" })).toThrow(/^TRUST_PROXY: "fd00::\/129" is not/);
  });
});

describe("API configuration: NATS settings without NATS_URL", () => {
  it("are checked all the same: a bad value is refused at this start, not at the one that turns NATS on", () => {
    expect(() => parseApiConfig({ VERIFIER_CACHE_TTL_MS: "60s" })).toThrow(
      /^VERIFIER_CACHE_TTL_MS: must be an integer/,
    );
    expect(() => parseApiConfig({ NATS_STREAM: "key.ledger" })).toThrow(/^NATS_STREAM: /);
    expect(() => parseApiConfig({ MEMBERSHIP_CONSUMER: "a b" })).toThrow(/^MEMBERSHIP_CONSUMER: /);
    expect(parseApiConfig({ VERIFIER_CACHE_TTL_MS: "30000" }).nats).toBeUndefined();
  });
});

describe("API configuration: OIDC_AUDIENCE", () => {
  it("is refused without the OIDC provider, where the development issuer would ignore it", () => {
    expect(() => parseApiConfig({ OIDC_AUDIENCE: "keyledger" })).toThrow(
      /^OIDC_AUDIENCE: applies only with OIDC_ISSUER and OIDC_JWKS_URL/,
    );
    const oidc = { OIDC_ISSUER: "https://id.example.com/", OIDC_JWKS_URL: "https://id.example.com/jwks" };
    expect(parseApiConfig({ ...oidc, OIDC_AUDIENCE: "keyledger" }).oidc?.audience).toBe("keyledger");
  });
});
