import { MAX_GRACE_PERIOD_SECONDS, PERMISSIONS, type Permission, parseIsoDateTime } from "@keyledger/domain";
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
// Half of a UTF-16 surrogate pair on its own (JSON allows "\ud800"): not text, and not storable or encodable.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
// Daytona rejects names with HTML tags, URL schemes or control characters (its `IsSafeDisplayString`); these reject
// everything it does, and more: any `scheme://`, `<!` tags, C1 controls, line separators, tab, CR and LF.
const HTML_TAG = /<[a-z!/][^>]*>/i;
const URL_LIKE = /\b(?:[a-z][a-z0-9+.-]*:\/\/|www\.)\S|javascript:|data:|mailto:|tel:/i;
/** `/api/api-keys/current` is the presented key's own route: a key of that name could not be read or rotated by name. */
const RESERVED_NAMES = new Set(["current"]);

/** The last instant Postgres and `Date.prototype.toISOString` both write as a plain ISO 8601 date-time. */
const LATEST_EXPIRY = Date.parse("9999-12-31T23:59:59.999Z");

/** A future expiry from an ISO 8601 string (a real date, at most year 9999), or the message explaining why not. */
function parseExpiresAt(value: unknown, now: Date): Date | string {
  // A date-time without a zone is UTC, whatever the host's time zone (as a date alone is): the same request means
  // the same instant on every replica. (`new Date` would read it in the host's zone.)
  const parsed = typeof value === "string" ? parseIsoDateTime(value, { zoneless: "utc" }) : undefined;
  if (parsed === undefined) return "expiresAt must be a Date instance";
  if (parsed.getTime() <= now.getTime()) return "expiresAt must be a date in the future";
  if (parsed.getTime() > LATEST_EXPIRY) return "expiresAt must not be later than 9999-12-31T23:59:59.999Z";
  return parsed;
}

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
    if (CONTROL_CHARACTERS.test(name) || LONE_SURROGATE.test(name) || HTML_TAG.test(name) || URL_LIKE.test(name)) {
      messages.push("name must not contain HTML tags, URLs, or control characters");
    }
    if (RESERVED_NAMES.has(name))
      messages.push(`name must not be "${name}": /api/api-keys/${name} is a route of its own`);
  }

  if (!Array.isArray(permissions)) {
    messages.push("permissions must be an array");
  } else if (!permissions.every((p) => typeof p === "string" && (PERMISSIONS as readonly string[]).includes(p))) {
    messages.push(`each value in permissions must be one of the following values: ${PERMISSIONS.join(", ")}`);
  }

  let expiry: Date | null = null;
  if (expiresAt !== undefined && expiresAt !== null) {
    const parsed = parseExpiresAt(expiresAt, now);
    if (typeof parsed === "string") messages.push(parsed);
    else expiry = parsed;
  }

  if (messages.length > 0) return { ok: false, messages };
  return { ok: true, value: { name: name as string, permissions: permissions as Permission[], expiresAt: expiry } };
}

/** Body of the rotation routes (an extension of the Daytona contract). */
export const RotateApiKeySchema = Type.Object({
  gracePeriodSeconds: Type.Optional(
    Type.Integer({
      minimum: 0,
      maximum: MAX_GRACE_PERIOD_SECONDS,
      default: 0,
      description: "How long the previous value keeps working (never past its own expiry). Default 0: it stops now.",
    }),
  ),
  expiresAt: Type.Optional(
    nullableDateTime(
      "Expiry of the new value; omitted keeps the current one, null: never. A key rotating itself cannot extend it.",
    ),
  ),
});

export type RotateApiKeyBody = { gracePeriodSeconds: number; expiresAt: Date | null | undefined };

/** Validates a rotation body (optional as a whole) with class-validator-style messages. */
export function validateRotateApiKeyBody(
  body: unknown,
  now: Date,
): { ok: true; value: RotateApiKeyBody } | { ok: false; messages: string[] } {
  if (body !== undefined && body !== null && (typeof body !== "object" || Array.isArray(body))) {
    return { ok: false, messages: ["body must be a JSON object"] };
  }
  const input = (body ?? {}) as Record<string, unknown>;
  const messages: string[] = [];
  let gracePeriodSeconds = 0;
  const grace = input.gracePeriodSeconds;
  if (grace !== undefined) {
    if (typeof grace !== "number" || !Number.isInteger(grace)) {
      messages.push("gracePeriodSeconds must be an integer number");
    } else if (grace < 0) {
      messages.push("gracePeriodSeconds must not be less than 0");
    } else if (grace > MAX_GRACE_PERIOD_SECONDS) {
      messages.push(`gracePeriodSeconds must not be greater than ${MAX_GRACE_PERIOD_SECONDS}`);
    } else {
      gracePeriodSeconds = grace;
    }
  }
  let expiresAt: Date | null | undefined;
  if (input.expiresAt === null) expiresAt = null;
  else if (input.expiresAt !== undefined) {
    const parsed = parseExpiresAt(input.expiresAt, now);
    if (typeof parsed === "string") messages.push(parsed);
    else expiresAt = parsed;
  }
  if (messages.length > 0) return { ok: false, messages };
  return { ok: true, value: { gracePeriodSeconds, expiresAt } };
}
