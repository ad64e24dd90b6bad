import type { Permission } from "./permissions";

/** A command the domain refuses. The API maps each code to a status; nothing is written. */
export type DomainErrorCode =
  | "KEY_NAME_TAKEN"
  | "KEY_NOT_FOUND"
  | "KEY_EXPIRED"
  | "PERMISSIONS_NOT_GRANTABLE"
  | "EXPIRY_IN_PAST"
  | "INVALID_GRACE_PERIOD"
  | "EXPIRY_EXTENSION_NOT_ALLOWED"
  | "KEY_CHANGED_CONCURRENTLY";

export class DomainError extends Error {
  constructor(
    readonly code: DomainErrorCode,
    message: string,
    readonly permissions: Permission[] = [],
  ) {
    super(message);
    this.name = "DomainError";
  }
}
