import { hashKeyValue, maskKeyValue } from "@keyledger/domain";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { CommandContext, KeyCommands } from "../../commands/key-commands";
import { ApiError } from "../../http-errors";
import { newKeyValue } from "../../key-values";
import { requireApiKey, requireJwt } from "../../plugins/app/authentication";
import { asApiError, jwtCommandContext } from "./domain-errors";
import {
  ApiKeyResponseSchema,
  errorResponses,
  NameParamsSchema,
  OrganizationHeaderSchema,
  RotateApiKeySchema,
  UserNameParamsSchema,
  validateRotateApiKeyBody,
} from "./schemas";

const security: Array<Record<string, string[]>> = [{ bearer: [] }, { oauth2: ["openid", "profile", "email"] }];
const tags = ["api-keys"];
const description =
  "keyledger extension of the Daytona contract: issues a new value for the key; the previous value keeps working " +
  "for gracePeriodSeconds (never past the key's expiry, nor past a shorter expiresAt this rotation sets), then is " +
  "rejected everywhere. At most two values work at once: rotating again during a grace period ends the earlier " +
  "previous value at once. A revoked or unknown key is 404; an expired key is 409 (create a new one); a rotation that " +
  "races another is 409. Only the key's own user rotates it: another user's id is 403, for an owner too (an owner " +
  "may revoke that key, not take a value of it). A key rotating itself (`/current/rotate`) may keep or shorten its expiry but not move it " +
  "later or remove it (403): only a JWT can. A previous value in its grace period cannot rotate the key (403).";

const rotateSchema = (operationId: string, summary: string, params?: object) => ({
  operationId,
  summary,
  description,
  tags,
  security,
  headers: OrganizationHeaderSchema,
  ...(params ? { params } : {}),
  body: RotateApiKeySchema,
  response: {
    201: {
      ...ApiKeyResponseSchema,
      description:
        "API key rotated: the new value, its createdAt the rotation's time (the key's list item keeps the key's " +
        "creation time).",
    },
    ...errorResponses,
  },
});

// The body is optional and validated by validateRotateApiKeyBody; the schema documents it.
const acceptAnyBody = () => (data: unknown) => ({ value: data });

/** Rotation: `POST /api/api-keys/{name}/rotate`, `/{userId}/{name}/rotate` and `/current/rotate`. */
export default async function apiKeyRotationRoutes(app: FastifyInstance, { commands }: { commands: KeyCommands }) {
  async function rotate(
    request: FastifyRequest,
    reply: FastifyReply,
    key: { organizationId: string; userId: string; name: string },
    context: CommandContext,
    self?: { expectedKeyHash: string },
  ) {
    const parsed = validateRotateApiKeyBody(request.body, context.now);
    if (!parsed.ok) throw new ApiError(400, parsed.messages.join(", "));
    const value = newKeyValue();
    const rotated = await commands
      .rotateApiKey(
        key,
        {
          keyHash: hashKeyValue(value),
          maskedValue: maskKeyValue(value),
          gracePeriodSeconds: parsed.value.gracePeriodSeconds,
          expiresAt: parsed.value.expiresAt,
          // A key rotating itself keeps or shortens its expiry; only a JWT can move it later.
          mayExtendExpiry: self === undefined,
          expectedKeyHash: self?.expectedKeyHash,
        },
        context,
      )
      .catch(asApiError);
    return reply.code(201).send({
      name: rotated.event.data.name,
      value,
      createdAt: rotated.event.data.rotatedAt,
      permissions: rotated.permissions,
      expiresAt: rotated.event.data.expiresAt,
    });
  }

  app.post(
    "/api-keys/current/rotate",
    {
      config: { auth: "api_key" },
      validatorCompiler: acceptAnyBody,
      schema: rotateSchema("rotateCurrentApiKey", "Rotate the calling API key"),
    },
    async (request, reply) => {
      const auth = requireApiKey(request);
      // A rotated-out value still in its grace period authenticates, but must never take the key over (nor is it
      // a race the client could win by retrying): only the current value rotates the key.
      if (auth.keyHash !== auth.key.key_hash) {
        throw new ApiError(403, "Only the API key's current value can rotate it, not a value it was rotated from");
      }
      const context = {
        now: new Date(),
        metadata: {
          actorUserId: auth.userId,
          organizationId: auth.organizationId,
          authMethod: "api_key" as const,
          requestId: request.id,
        },
      };
      const key = { organizationId: auth.organizationId, userId: auth.userId, name: auth.key.name };
      return rotate(request, reply, key, context, { expectedKeyHash: auth.keyHash });
    },
  );

  app.post(
    "/api-keys/:name/rotate",
    {
      config: { auth: "jwt" },
      validatorCompiler: acceptAnyBody,
      schema: rotateSchema("rotateApiKey", "Rotate API key", NameParamsSchema),
    },
    async (request, reply) => {
      const auth = requireJwt(request);
      const { name } = request.params as { name: string };
      const key = { organizationId: auth.organizationId, userId: auth.userId, name };
      return rotate(request, reply, key, jwtCommandContext(auth, request));
    },
  );

  app.post(
    "/api-keys/:userId/:name/rotate",
    {
      config: { auth: "jwt" },
      validatorCompiler: acceptAnyBody,
      schema: rotateSchema("rotateApiKeyForUser", "Rotate API key for user", UserNameParamsSchema),
    },
    async (request, reply) => {
      const auth = requireJwt(request);
      const { userId, name } = request.params as { userId: string; name: string };
      if (userId !== auth.userId) {
        // Daytona's member check first; then, unlike a GET or DELETE for another user, an owner may not rotate
        // another member's key: the new value would be the owner's to use as that member (gateways and the log
        // would attribute its uses to the member). An owner revokes it instead, and the member creates a new one.
        if (auth.role !== "owner") throw new ApiError(403, "Incorrect user ID provided");
        throw new ApiError(
          403,
          "Only the key's own user can rotate it (its new value would be theirs): an owner can revoke it instead",
        );
      }
      const key = { organizationId: auth.organizationId, userId, name };
      return rotate(request, reply, key, jwtCommandContext(auth, request));
    },
  );
}
