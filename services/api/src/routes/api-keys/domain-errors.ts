import { DomainError } from "@keyledger/domain";
import { StreamVersionConflict } from "@keyledger/event-store";
import type { FastifyRequest } from "fastify";
import type { CommandContext } from "../../commands/key-commands";
import { ApiError } from "../../http-errors";
import type { JwtAuthContext } from "../../plugins/app/authentication";

/**
 * Maps a domain refusal to Daytona's status and message; a stream that kept changing under every retry of the
 * command to 409 (nothing was written; the client may try again); anything else propagates.
 */
export function asApiError(error: unknown): never {
  if (error instanceof StreamVersionConflict) {
    throw new ApiError(409, "API key was changed concurrently, try again");
  }
  if (error instanceof DomainError) {
    switch (error.code) {
      case "KEY_NAME_TAKEN":
      case "KEY_CHANGED_CONCURRENTLY":
      case "KEY_EXPIRED":
        throw new ApiError(409, error.message);
      case "KEY_NOT_FOUND":
        throw new ApiError(404, error.message);
      case "PERMISSIONS_NOT_GRANTABLE":
      case "EXPIRY_EXTENSION_NOT_ALLOWED":
        throw new ApiError(403, error.message);
      case "EXPIRY_IN_PAST":
      case "INVALID_GRACE_PERIOD":
        throw new ApiError(400, error.message);
    }
  }
  throw error;
}

/** Who is acting, for the events a JWT-authenticated command appends. */
export function jwtCommandContext(auth: JwtAuthContext, request: FastifyRequest): CommandContext {
  return {
    now: new Date(),
    metadata: {
      actorUserId: auth.userId,
      organizationId: auth.organizationId,
      authMethod: auth.method,
      requestId: request.id,
    },
  };
}
