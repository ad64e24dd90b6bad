import { Type } from "@sinclair/typebox";

export const MAX_EVENTS_PAGE = 1000;
export const DEFAULT_EVENTS_PAGE = 100;
/** What a 400 says of a `limit` that is not one (the schema's pattern, then the route's range check). */
export const LIMIT_MESSAGE = `must be an integer between 1 and ${MAX_EVENTS_PAGE}`;

export const ApiKeyEventsQuerySchema = Type.Object(
  {
    after: Type.Optional(
      Type.String({
        maxLength: 64,
        description: "Opaque cursor: a page's `nextCursor` or an item's `cursor`. Omitted: from the first event.",
      }),
    ),
    limit: Type.Optional(
      Type.String({
        pattern: "^[0-9]{1,4}$",
        "x-error-message": LIMIT_MESSAGE,
        description: `Events per page, 1 to ${MAX_EVENTS_PAGE} (default ${DEFAULT_EVENTS_PAGE}).`,
      }),
    ),
  },
  { additionalProperties: false },
);

const nullableString = Type.Union([Type.String(), Type.Null()]);

export const ApiKeyEventSchema = Type.Object({
  cursor: Type.String({ description: "Pass as `after` to read on from this event." }),
  position: Type.String({ description: "The event's position in the log." }),
  eventId: Type.String({ format: "uuid" }),
  type: Type.String({ examples: ["KeyCreated", "KeyRevoked", "KeyRotated", "KeyUsed", "MemberAccessChanged"] }),
  occurredAt: Type.String({ format: "date-time" }),
  actor: Type.Object({
    userId: nullableString,
    authMethod: nullableString,
    requestId: nullableString,
  }),
  stream: Type.Object({ id: Type.String(), version: Type.Integer() }),
  data: Type.Unknown({
    description:
      "The event's data, a JSON object without key hashes; never a key value. On an event changed in the database " +
      "(see `damaged`), whatever its row holds.",
  }),
  hash: Type.String({
    pattern: "^[0-9a-f]{64}$",
    description: "The event's hash in the log's SHA-256 chain (`pnpm keyledger verify-log`).",
  }),
  damaged: Type.Optional(
    Type.String({
      description:
        "Present only on an event whose stored data or metadata is not a JSON object (the log was changed in " +
        "the database): what is wrong. The event is served as stored; run `pnpm keyledger verify-log`.",
    }),
  ),
});

export const ApiKeyEventPageSchema = Type.Object({
  items: Type.Array(ApiKeyEventSchema),
  nextCursor: Type.String({ description: "Where the next page starts; poll with it for newer events." }),
  hasMore: Type.Boolean({ description: "More events follow right away." }),
});
