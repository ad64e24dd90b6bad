import { PERMISSIONS, type Permission } from "@keyledger/domain";
import { type Static, Type } from "@sinclair/typebox";

const nullableDateTime = (description: string) =>
  Type.Unsafe<string | null>({ type: ["string", "null"], format: "date-time", description });

export const PermissionSchema = Type.Unsafe<Permission>({ $id: "Permission", type: "string", enum: [...PERMISSIONS] });
const permissionRef = Type.Unsafe<Permission>(Type.Ref("Permission"));

export const CreateApiKeySchema = Type.Object({
  name: Type.String({ description: "The name of the API key", examples: ["My API Key"] }),
  permissions: Type.Array(permissionRef, {
    description: "The list of organization resource permissions explicitly assigned to the API key",
  }),
  expiresAt: Type.Optional(nullableDateTime("When the API key expires")),
});

export type CreateApiKeyBody = { name: string; permissions: Permission[]; expiresAt: Date | null };

export const ApiKeyResponseSchema = Type.Object({
  name: Type.String(),
  value: Type.String({ description: "The API key value" }),
  createdAt: Type.String({ format: "date-time" }),
  permissions: Type.Array(permissionRef),
  expiresAt: nullableDateTime("When the API key expires"),
});
export type ApiKeyResponse = Static<typeof ApiKeyResponseSchema>;

export const ApiKeyListSchema = Type.Object({
  name: Type.String(),
  value: Type.String({ description: "The masked API key value" }),
  createdAt: Type.String({ format: "date-time" }),
  permissions: Type.Array(permissionRef),
  lastUsedAt: nullableDateTime("When the API key was last used"),
  expiresAt: nullableDateTime("When the API key expires"),
  userId: Type.String({ description: "The user ID of the user who created the API key" }),
  organizationId: Type.String({ description: "The organization the API key belongs to" }),
});
export type ApiKeyListItem = Static<typeof ApiKeyListSchema>;

export const ErrorSchema = Type.Object(
  {
    path: Type.String(),
    timestamp: Type.String({ format: "date-time" }),
    statusCode: Type.Integer(),
    error: Type.String(),
    message: Type.String(),
  },
  { $id: "Error" },
);
const errorRef = Type.Ref("Error");

export const OrganizationHeaderSchema = Type.Object({
  "X-Daytona-Organization-ID": Type.Optional(
    Type.String({ description: "Use with JWT to specify the organization ID" }),
  ),
});

export const NameParamsSchema = Type.Object({ name: Type.String() });
export const UserNameParamsSchema = Type.Object({ userId: Type.String(), name: Type.String() });

export const errorResponses = {
  400: errorRef,
  401: errorRef,
  403: errorRef,
  404: errorRef,
  409: errorRef,
  429: errorRef,
  500: errorRef,
  503: errorRef,
};

const MAX_NAME_LENGTH = 255;
// biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
const HTML_TAG = /<\/?[a-z!][^>]*>/i;
const URL_LIKE = /\b(?:[a-z][a-z0-9+.-]*:\/\/|www\.)\S/i;

/**
 * Validates a create body and answers with class-validator's messages (what Daytona's clients show), plus our
 * stricter name and expiry rules. Returns the parsed body or the list of messages.
 */
export function validateCreateApiKeyBody(
  body: unknown,
  now: Date,
): { ok: true; value: CreateApiKeyBody } | { ok: false; messages: string[] } {
  const input = (typeof body === "object" && body !== null && !Array.isArray(body) ? body : {}) as Record<
    string,
    unknown
  >;
  const messages: string[] = [];
  const { name, permissions, expiresAt } = input;

  if (name === undefined || name === null || (typeof name === "string" && name.trim() === "")) {
    messages.push("name should not be empty");
  }
  if (typeof name !== "string") {
    messages.push("name must be a string");
  } else if (name.trim() !== "") {
    if (name.length > MAX_NAME_LENGTH) {
      messages.push(`name must be shorter than or equal to ${MAX_NAME_LENGTH} characters`);
    }
    if (CONTROL_CHARACTERS.test(name) || HTML_TAG.test(name) || URL_LIKE.test(name)) {
      messages.push("name must not contain HTML tags, URLs or control characters");
    }
  }

  if (!Array.isArray(permissions)) {
    messages.push("permissions must be an array");
  } else if (!permissions.every((p) => typeof p === "string" && (PERMISSIONS as readonly string[]).includes(p))) {
    messages.push(`each value in permissions must be one of the following values: ${PERMISSIONS.join(", ")}`);
  }

  let expiry: Date | null = null;
  if (expiresAt !== undefined && expiresAt !== null) {
    const parsed =
      typeof expiresAt === "string" &&
      /^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/.test(expiresAt)
        ? new Date(expiresAt)
        : null;
    if (parsed === null || Number.isNaN(parsed.getTime())) {
      messages.push("expiresAt must be a Date instance");
    } else if (parsed.getTime() <= now.getTime()) {
      messages.push("expiresAt must be a date in the future");
    } else {
      expiry = parsed;
    }
  }

  if (messages.length > 0) return { ok: false, messages };
  return { ok: true, value: { name: name as string, permissions: permissions as Permission[], expiresAt: expiry } };
}
