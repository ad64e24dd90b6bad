import { STATUS_CODES } from "node:http";
import { redactSecrets } from "@keyledger/domain";

/** An error the API answers with its own status and message, in Daytona's error body. */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export const invalidCredentials = () => new ApiError(401, "Invalid credentials");
export const invalidAuthContext = () => new ApiError(403, "Invalid authentication context");
export const apiKeyNotFound = () => new ApiError(404, "API key not found");

/** Daytona's error body: `{ path, timestamp, statusCode, error, message }`. */
export type ErrorBody = { path: string; timestamp: string; statusCode: number; error: string; message: string };

/** Never echoes key material, not even the caller's own (a key pasted into a URL, a bad JSON body quoted back). */
export function errorBody(path: string, statusCode: number, message: string): ErrorBody {
  return {
    path: redactSecrets(path),
    timestamp: new Date().toISOString(),
    statusCode,
    error: STATUS_CODES[statusCode] ?? "Error",
    message: redactSecrets(message),
  };
}
