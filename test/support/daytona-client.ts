import { STATUS_CODES } from "node:http";
import { type ApiKeyList, type ApiKeyResponse, ApiKeysApi, Configuration } from "@daytonaio/api-client";
import { expect } from "vitest";

/** Every response body text a client received, in order (to prove a secret never comes back). */
export type Transcript = string[];

/**
 * The official Daytona client (`ApiKeysApi`) against a running API, authenticated with `token` (a JWT or an API
 * key). Every response body is appended to `transcript` when one is given.
 */
export function apiKeysClient(baseUrl: string, token: string | undefined, transcript?: Transcript): ApiKeysApi {
  const configuration = new Configuration({
    basePath: `${baseUrl}/api`,
    accessToken: token,
    baseOptions: {
      transformResponse: [
        (data: unknown) => {
          if (typeof data !== "string") return data;
          transcript?.push(data);
          if (data === "") return data;
          try {
            return JSON.parse(data);
          } catch {
            return data;
          }
        },
      ],
    },
  });
  return new ApiKeysApi(configuration);
}

/** What the client actually receives: dates stay ISO strings (the generated client does not revive them). */
export type ApiKeyListJson = Omit<ApiKeyList, "createdAt" | "lastUsedAt" | "expiresAt"> & {
  createdAt: string;
  lastUsedAt: string | null;
  expiresAt: string | null;
};
export type ApiKeyResponseJson = Omit<ApiKeyResponse, "createdAt" | "expiresAt"> & {
  createdAt: string;
  expiresAt: string | null;
};

export const asJson = <T>(value: unknown) => value as T;

export type ErrorBody = { path: string; timestamp: string; statusCode: number; error: string; message: string };

type HttpFailure = { response?: { status: number; data: unknown; headers: Record<string, unknown> } };

/** Asserts a Daytona error body: exactly {path, timestamp, statusCode, error, message}, consistent with `status`. */
export function expectErrorBody(body: unknown, status: number, message?: string | RegExp, path?: string): ErrorBody {
  expect(body, JSON.stringify(body)).toBeTypeOf("object");
  const error = body as ErrorBody;
  expect(Object.keys(error).sort()).toEqual(["error", "message", "path", "statusCode", "timestamp"]);
  expect(error.statusCode).toBe(status);
  expect(error.error).toBe(STATUS_CODES[status]);
  expect(typeof error.message).toBe("string");
  expect(new Date(error.timestamp).toISOString()).toBe(error.timestamp);
  expect(typeof error.path).toBe("string");
  if (path !== undefined) expect(error.path).toBe(path);
  if (typeof message === "string") expect(error.message).toBe(message);
  else if (message instanceof RegExp) expect(error.message).toMatch(message);
  return error;
}

/** Awaits a client call that must fail with `status` and a Daytona error body; returns the body. */
export async function expectClientError(
  call: Promise<unknown>,
  status: number,
  message?: string | RegExp,
  path?: string,
): Promise<ErrorBody> {
  let failure: HttpFailure | undefined;
  try {
    const response = await call;
    throw new Error(`expected HTTP ${status}, got success: ${JSON.stringify((response as { data?: unknown }).data)}`);
  } catch (error) {
    failure = error as HttpFailure;
    if (!failure.response) throw error;
  }
  expect(failure.response?.status, JSON.stringify(failure.response?.data)).toBe(status);
  return expectErrorBody(failure.response?.data, status, message, path);
}

/** Awaits a fetch that must fail with `status` and a Daytona error body; returns the body. */
export async function expectFetchError(
  response: Promise<Response> | Response,
  status: number,
  message?: string | RegExp,
  path?: string,
): Promise<ErrorBody> {
  const res = await response;
  const text = await res.text();
  expect(res.status, text).toBe(status);
  expect(res.headers.get("content-type") ?? "").toMatch(/^application\/json/);
  return expectErrorBody(JSON.parse(text), status, message, path);
}
