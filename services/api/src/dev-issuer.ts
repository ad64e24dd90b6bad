import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import {
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JSONWebKeySet,
  type JWK,
  SignJWT,
} from "jose";

const ALGORITHM = "ES256";
export const DEV_ISSUER_AUDIENCE = "keyledger-dev";

/**
 * The development issuer: when no OIDC provider is configured (and never in production) the API signs its own
 * JWTs with a key pair kept in the data directory, publishes the public key at `/.well-known/jwks.json`, and
 * verifies tokens against it without fetching anything.
 */
export type DevIssuer = {
  issuer: string;
  audience: string;
  jwksUrl: string;
  jwks: JSONWebKeySet;
  /** Where the private key is kept (undefined: in memory only). */
  keyFile: string | undefined;
  openidConfiguration(): Record<string, unknown>;
  sign(subject: string, expiresInSeconds: number): Promise<{ token: string; expiresAt: Date }>;
};

async function loadOrCreatePrivateJwk(keyFile: string | undefined): Promise<JWK> {
  if (keyFile !== undefined) {
    const text = await readFile(keyFile, "utf8").catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return undefined;
      throw error;
    });
    if (text !== undefined) return JSON.parse(text) as JWK;
  }
  const { privateKey } = await generateKeyPair(ALGORITHM, { extractable: true });
  const jwk = await exportJWK(privateKey);
  if (keyFile !== undefined) {
    await mkdir(dirname(keyFile), { recursive: true, mode: 0o700 });
    // wx: two processes starting at once keep the first key instead of overwriting each other's.
    await writeFile(keyFile, JSON.stringify(jwk), { mode: 0o600, flag: "wx" }).catch(async (error) => {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    });
    return JSON.parse(await readFile(keyFile, "utf8")) as JWK;
  }
  return jwk;
}

/** Loads the issuer's key pair from `keyFile`, creating it on first start. `issuer` is the API's public URL. */
export async function loadDevIssuer(options: { issuer: string; keyFile: string | undefined }): Promise<DevIssuer> {
  const privateJwk = await loadOrCreatePrivateJwk(options.keyFile);
  const { d: _private, ...publicJwk } = privateJwk;
  const kid = await calculateJwkThumbprint(publicJwk);
  const privateKey = await importJWK(privateJwk, ALGORITHM);
  const issuer = options.issuer.replace(/\/+$/, "");
  const jwksUrl = `${issuer}/.well-known/jwks.json`;
  return {
    issuer,
    audience: DEV_ISSUER_AUDIENCE,
    jwksUrl,
    jwks: { keys: [{ ...publicJwk, kid, alg: ALGORITHM, use: "sig" }] },
    keyFile: options.keyFile,
    openidConfiguration: () => ({
      issuer,
      jwks_uri: jwksUrl,
      id_token_signing_alg_values_supported: [ALGORITHM],
      subject_types_supported: ["public"],
      response_types_supported: ["id_token"],
    }),
    async sign(subject, expiresInSeconds) {
      const issuedAt = Math.floor(Date.now() / 1000);
      const expiresAt = new Date((issuedAt + expiresInSeconds) * 1000);
      const token = await new SignJWT({})
        .setProtectedHeader({ alg: ALGORITHM, kid, typ: "JWT" })
        .setIssuer(issuer)
        .setAudience(DEV_ISSUER_AUDIENCE)
        .setSubject(subject)
        .setIssuedAt(issuedAt)
        .setExpirationTime(issuedAt + expiresInSeconds)
        .sign(privateKey);
      return { token, expiresAt };
    },
  };
}
