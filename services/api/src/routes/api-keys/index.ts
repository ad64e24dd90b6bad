import { randomUUID } from "node:crypto";
import { hashKeyValue, maskKeyValue } from "@keyledger/domain";
import type { FastifyInstance } from "fastify";
import type { Kysely } from "kysely";
import type { KeyCommands } from "../../commands/key-commands";
import { ApiError, apiKeyNotFound } from "../../http-errors";
import { newKeyValue } from "../../key-values";
import { presentedBearerToken, requireApiKey, requireJwt } from "../../plugins/app/authentication";
import { findLiveApiKey, listLiveApiKeysJson } from "../../read-model-queries";
import { asApiError, jwtCommandContext } from "./domain-errors";
import { currentKeyBody, toApiKeyListItem } from "./list-item";
import {
  ApiKeyListSchema,
  ApiKeyResponseSchema,
  CreateApiKeySchema,
  errorResponses,
  NameParamsSchema,
  OrganizationHeaderSchema,
  UserNameParamsSchema,
  validateCreateApiKeyBody,
} from "./schemas";

export type ApiKeyRoutesOptions = { db: Kysely<unknown>; commands: KeyCommands };

const security: Array<Record<string, string[]>> = [{ bearer: [] }, { oauth2: ["openid", "profile", "email"] }];
const tags = ["api-keys"];

/** The six Daytona API-key operations. */
export default async function apiKeyRoutes(app: FastifyInstance, { db, commands }: ApiKeyRoutesOptions) {
  app.post(
    "/api-keys",
    {
      config: { auth: "jwt" },
      // The body is validated by validateCreateApiKeyBody (class-validator messages); the schema documents it.
      validatorCompiler: () => (data) => ({ value: data }),
      schema: {
        operationId: "createApiKey",
        summary: "Create API key",
        tags,
        security,
        headers: OrganizationHeaderSchema,
        body: CreateApiKeySchema,
        response: { 201: { ...ApiKeyResponseSchema, description: "API key created successfully." }, ...errorResponses },
      },
    },
    async (request, reply) => {
      const auth = requireJwt(request);
      const context = jwtCommandContext(auth, request);
      const parsed = validateCreateApiKeyBody(request.body, context.now);
      if (!parsed.ok) throw new ApiError(400, parsed.messages.join(", "));
      const value = newKeyValue();
      const created = await commands
        .createApiKey(
          {
            keyId: randomUUID(),
            organizationId: auth.organizationId,
            userId: auth.userId,
            name: parsed.value.name,
            keyHash: hashKeyValue(value),
            maskedValue: maskKeyValue(value),
            permissions: parsed.value.permissions,
            expiresAt: parsed.value.expiresAt,
          },
          context,
          { role: auth.role, permissions: auth.memberPermissions },
        )
        .catch(asApiError);
      if (created.type !== "KeyCreated") throw new Error("create decided no KeyCreated");
      return reply.code(201).send({
        name: created.data.name,
        value,
        createdAt: created.data.createdAt,
        permissions: created.data.permissions,
        expiresAt: created.data.expiresAt,
      });
    },
  );

  app.get(
    "/api-keys",
    {
      config: { auth: "jwt" },
      schema: {
        operationId: "listApiKeys",
        summary: "List API keys",
        tags,
        security,
        headers: OrganizationHeaderSchema,
        response: {
          200: { type: "array", items: ApiKeyListSchema, description: "API keys retrieved successfully." },
          ...errorResponses,
          500: { ...errorResponses[500], description: "Error fetching API keys." },
        },
      },
    },
    async (request, reply) => {
      const auth = requireJwt(request);
      const body = await listLiveApiKeysJson(db, auth.organizationId, auth.role === "owner" ? undefined : auth.userId);
      return reply.type("application/json; charset=utf-8").send(body);
    },
  );

  app.get(
    "/api-keys/current",
    {
      config: { auth: "api_key" },
      schema: {
        operationId: "getCurrentApiKey",
        summary: "Get current API key's details",
        tags,
        security,
        headers: OrganizationHeaderSchema,
        response: { 200: { ...ApiKeyListSchema, description: "API key retrieved successfully." }, ...errorResponses },
      },
    },
    async (request, reply) => {
      const auth = requireApiKey(request);
      return reply
        .type("application/json; charset=utf-8")
        .send(
          currentKeyBody(
            auth.key,
            auth.keyHash,
            auth.validUntil,
            presentedBearerToken(request.headers, request.raw.rawHeaders) as string,
          ),
        );
    },
  );

  app.get(
    "/api-keys/:name",
    {
      config: { auth: "jwt" },
      schema: {
        operationId: "getApiKey",
        summary: "Get API key",
        tags,
        security,
        headers: OrganizationHeaderSchema,
        params: NameParamsSchema,
        response: { 200: { ...ApiKeyListSchema, description: "API key retrieved successfully." }, ...errorResponses },
      },
    },
    async (request) => {
      const auth = requireJwt(request);
      const { name } = request.params as { name: string };
      const row = await findLiveApiKey(db, auth.organizationId, auth.userId, name);
      if (!row) throw apiKeyNotFound();
      return toApiKeyListItem(row);
    },
  );

  app.delete(
    "/api-keys/:name",
    {
      config: { auth: "jwt" },
      schema: {
        operationId: "deleteApiKey",
        summary: "Delete API key",
        tags,
        security,
        headers: OrganizationHeaderSchema,
        params: NameParamsSchema,
        response: { 204: { type: "null", description: "API key deleted successfully." }, ...errorResponses },
      },
    },
    async (request, reply) => {
      const auth = requireJwt(request);
      const { name } = request.params as { name: string };
      await commands
        .revokeApiKey(
          { organizationId: auth.organizationId, userId: auth.userId, name },
          "deleted",
          jwtCommandContext(auth, request),
        )
        .catch(asApiError);
      return reply.code(204).send();
    },
  );

  app.delete(
    "/api-keys/:userId/:name",
    {
      config: { auth: "jwt" },
      schema: {
        operationId: "deleteApiKeyForUser",
        summary: "Delete API key for user",
        tags,
        security,
        headers: OrganizationHeaderSchema,
        params: UserNameParamsSchema,
        response: { 204: { type: "null", description: "API key deleted successfully." }, ...errorResponses },
      },
    },
    async (request, reply) => {
      const auth = requireJwt(request);
      const { userId, name } = request.params as { userId: string; name: string };
      if (userId !== auth.userId && auth.role !== "owner") throw new ApiError(403, "Incorrect user ID provided");
      await commands
        .revokeApiKey(
          { organizationId: auth.organizationId, userId, name },
          "deleted",
          jwtCommandContext(auth, request),
        )
        .catch(asApiError);
      return reply.code(204).send();
    },
  );
}
