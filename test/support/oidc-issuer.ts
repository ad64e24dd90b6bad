import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { exportJWK, generateKeyPair, type JWK, SignJWT } from "jose";

export type TestIssuer = {
  issuer: string;
  jwksUrl: string;
  audience: string;
  /** A token signed by the issuer's RS256 (default) or ES256 key. */
  token(claims: { sub?: string; [claim: string]: unknown }, options?: TokenOptions): Promise<string>;
  close(): Promise<void>;
};

export type TokenOptions = {
  alg?: "RS256" | "ES256";
  issuer?: string;
  audience?: string;
  expiresIn?: string | number;
  /** Sign with a key the JWKS does not publish. */
  foreignKey?: boolean;
};

/** An OIDC issuer for tests: generates RS256 and ES256 key pairs and serves their JWKS over HTTP. */
export async function startTestIssuer(audience = "keyledger-test"): Promise<TestIssuer> {
  const rsa = await generateKeyPair("RS256");
  const ec = await generateKeyPair("ES256");
  const foreign = await generateKeyPair("RS256");
  const jwks: { keys: JWK[] } = {
    keys: [
      { ...(await exportJWK(rsa.publicKey)), kid: "rsa-1", alg: "RS256", use: "sig" },
      { ...(await exportJWK(ec.publicKey)), kid: "ec-1", alg: "ES256", use: "sig" },
    ],
  };
  const server: Server = createServer((req, res) => {
    if (req.url === "/.well-known/jwks.json") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(jwks));
      return;
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const issuer = `http://127.0.0.1:${port}/`;
  return {
    issuer,
    jwksUrl: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    audience,
    async token(claims, options = {}) {
      const alg = options.alg ?? "RS256";
      const key = options.foreignKey ? foreign.privateKey : alg === "RS256" ? rsa.privateKey : ec.privateKey;
      let jwt = new SignJWT(claims)
        .setProtectedHeader({ alg, kid: alg === "RS256" ? "rsa-1" : "ec-1" })
        .setIssuedAt()
        .setIssuer(options.issuer ?? issuer)
        .setAudience(options.audience ?? audience)
        .setExpirationTime(options.expiresIn ?? "10m");
      if (claims.sub !== undefined) jwt = jwt.setSubject(claims.sub);
      return jwt.sign(key);
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
