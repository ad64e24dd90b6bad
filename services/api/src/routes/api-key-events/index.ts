import { once } from "node:events";
import type { ServerResponse } from "node:http";
import {
  type AuditEvent,
  decodeCursor,
  encodeCursor,
  listOrganizationEvents,
  SEALED_CHANNEL,
} from "@keyledger/audit-log";
import type { NotificationSource } from "@keyledger/projections";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { decodeJwt } from "jose";
import type { Kysely } from "kysely";
import { databaseKeyLookup } from "../../api-key-verifier";
import { ApiError, invalidCredentials } from "../../http-errors";
import { type AuthContext, presentedBearerToken } from "../../plugins/app/authentication";
import { findMember } from "../../read-model-queries";
import { errorResponses } from "../api-keys/schemas";
import {
  ApiKeyEventPageSchema,
  ApiKeyEventsQuerySchema,
  DEFAULT_EVENTS_PAGE,
  LIMIT_MESSAGE,
  MAX_EVENTS_PAGE,
} from "./schemas";

export type ApiKeyEventRoutesOptions = {
  db: Kysely<unknown>;
  /** Wakes event streams when the chain grows (`keyledger_sealed`); without it they poll. */
  notifications?: NotificationSource;
  /** How often an event stream looks for new events without a notification (ms). */
  pollIntervalMs?: number;
  /** Comment line sent on idle event streams, so proxies keep them open (ms). */
  heartbeatMs?: number;
  /**
   * Longest an idle event stream goes without checking that its credential still may read the audit log (ms,
   * default 5000). A stream also checks before it sends each batch of events, and ends at its JWT's `exp`.
   */
  accessRecheckMs?: number;
};

const ACCESS_RECHECK_MS = 5000;

const STREAM_PAGE = 500;

/** Owners, members holding `read:audit_logs`, and API keys holding `read:audit_logs`. */
function mayReadAuditLog(auth: AuthContext): boolean {
  if (auth.method === "jwt") return auth.role === "owner" || auth.memberPermissions.includes("read:audit_logs");
  return (auth.key.permissions as readonly string[]).includes("read:audit_logs");
}

/**
 * Whether the credential that opened an event stream may still read the audit log: the reason it may not, or
 * undefined. Read from the database (the read model is updated in the transaction of every command, so a
 * revocation or a narrowed membership shows as soon as its event exists): a JWT's member row in the organization
 * (role and permissions) and its `exp`; an API key's row (revoked, expired, rotation grace over, permissions).
 */
type AccessCheck = () => Promise<string | undefined>;

function streamAccessCheck(db: Kysely<unknown>, request: FastifyRequest, auth: AuthContext): AccessCheck {
  if (auth.method === "jwt") {
    // The plugin verified this token's signature and `exp` for this request; only its `exp` is read again.
    const token = presentedBearerToken(request.headers, request.raw.rawHeaders);
    let expiresAtMs = Number.POSITIVE_INFINITY;
    if (token !== undefined) {
      try {
        const { exp } = decodeJwt(token);
        if (typeof exp === "number") expiresAtMs = exp * 1000;
      } catch {
        expiresAtMs = 0;
      }
    }
    return async () => {
      if (Date.now() >= expiresAtMs) return "the token expired";
      const member = await findMember(db, auth.organizationId, auth.userId);
      if (member === undefined) return "no longer a member of the organization";
      if (!mayReadAuditLog({ ...auth, role: member.role, memberPermissions: member.permissions })) {
        return "no longer holds read:audit_logs";
      }
      return undefined;
    };
  }
  const lookup = databaseKeyLookup(db);
  return async () => {
    const result = await lookup("", auth.keyHash);
    if (!result.valid) return `the API key is ${result.code.toLowerCase().replace("_", " ")}`;
    const row = result.key.row;
    if (row.organization_id !== auth.organizationId || row.key_id !== auth.key.key_id) return "the API key changed";
    if (!mayReadAuditLog({ ...auth, key: row })) return "the API key no longer holds read:audit_logs";
    return undefined;
  };
}

/** Events changed in the database are served as stored (flagged `damaged`); the operator hears of them too. */
function warnOfDamage(request: FastifyRequest, items: readonly AuditEvent[]) {
  for (const item of items) {
    if (item.damaged !== undefined) {
      request.log.warn({ position: item.position, damaged: item.damaged }, "served an event changed in the database");
    }
  }
}

function wantsEventStream(request: FastifyRequest): boolean {
  const accept = request.headers.accept;
  return typeof accept === "string" && accept.toLowerCase().includes("text/event-stream");
}

/**
 * The organization's API-key and membership events for auditors, in the order of the log's hash chain (commit
 * order), sealed ones only, each with its chain hash. `Accept: text/event-stream` keeps the response open and
 * streams events as they are sealed (resume with `Last-Event-ID`).
 */
export default async function apiKeyEventRoutes(app: FastifyInstance, options: ApiKeyEventRoutesOptions) {
  const openStreams = new Set<() => void>();
  app.addHook("preClose", async () => {
    for (const close of openStreams) close();
  });

  app.get(
    "/api-key-events",
    {
      config: { auth: "jwt_or_api_key" },
      schema: {
        operationId: "listApiKeyEvents",
        summary: "List the organization's API-key events (audit log)",
        description:
          "Events in commit order with an opaque cursor. With `Accept: text/event-stream`, new events are streamed " +
          "as `data:` lines (each with `id:` = its cursor).",
        tags: ["api-key-events"],
        security: [{ bearer: [] }, { oauth2: ["openid", "profile", "email"] }],
        querystring: ApiKeyEventsQuerySchema,
        response: { 200: { ...ApiKeyEventPageSchema, description: "A page of events." }, ...errorResponses },
      },
    },
    async (request, reply) => {
      const auth = request.auth;
      if (auth === null) throw invalidCredentials();
      if (!mayReadAuditLog(auth)) {
        throw new ApiError(403, "Insufficient permissions: reading audit logs needs the owner role or read:audit_logs");
      }
      const query = request.query as { after?: string; limit?: string };
      // An EventSource reconnects to the same URL (its `after` included) and says where it got to in
      // `Last-Event-ID`: that wins, or every reconnection would replay the events since `after`.
      const lastEventId = request.headers["last-event-id"];
      const resumes = wantsEventStream(request) && typeof lastEventId === "string" && lastEventId !== "";
      const given = resumes ? lastEventId : query.after;
      const after = given === undefined ? "0" : decodeCursor(given);
      if (after === undefined) {
        throw new ApiError(400, `${resumes ? "Last-Event-ID" : "after"} must be a cursor returned by this API`);
      }
      const limit = query.limit === undefined ? DEFAULT_EVENTS_PAGE : Number(query.limit);
      if (limit < 1 || limit > MAX_EVENTS_PAGE) throw new ApiError(400, `limit ${LIMIT_MESSAGE}`);

      if (wantsEventStream(request)) {
        return streamEvents(request, reply, auth.organizationId, after, streamAccessCheck(options.db, request, auth));
      }

      const rows = await listOrganizationEvents(options.db, {
        organizationId: auth.organizationId,
        after,
        limit: limit + 1,
      });
      const items = rows.slice(0, limit);
      warnOfDamage(request, items);
      return {
        items,
        nextCursor: items[items.length - 1]?.cursor ?? encodeCursor(after),
        hasMore: rows.length > limit,
      };
    },
  );

  async function streamEvents(
    request: FastifyRequest,
    reply: FastifyReply,
    organizationId: string,
    from: string,
    stillAllowed: AccessCheck,
  ) {
    reply.hijack();
    const res: ServerResponse = reply.raw;
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      connection: "keep-alive",
      "x-accel-buffering": "no",
      "x-request-id": request.id,
    });
    let closed = false;
    let wake: (() => void) | undefined;
    const close = () => {
      closed = true;
      wake?.();
    };
    openStreams.add(close);
    res.on("close", close);
    const unsubscribe = options.notifications?.subscribe(SEALED_CHANNEL, () => wake?.());
    const heartbeat = setInterval(() => {
      if (!closed) res.write(": keep-alive\n\n");
    }, options.heartbeatMs ?? 15_000);
    const write = async (chunk: string) => {
      if (!res.write(chunk) && !closed) await Promise.race([once(res, "drain"), once(res, "close")]);
    };
    let cursor = from;
    const recheckMs = options.accessRecheckMs ?? ACCESS_RECHECK_MS;
    let checkedAt = Date.now();
    try {
      await write("retry: 2000\n\n");
      while (!closed) {
        const page = await listOrganizationEvents(options.db, { organizationId, after: cursor, limit: STREAM_PAGE });
        // The credential is checked again before each batch it is sent and every few seconds while idle: a
        // revoked key, a member who lost read:audit_logs or an expired token ends the stream, with nothing more sent.
        if (page.length > 0 || Date.now() - checkedAt >= recheckMs) {
          const lost = await stillAllowed();
          checkedAt = Date.now();
          if (lost !== undefined) {
            request.log.info({ reason: lost }, "audit event stream ended: the caller lost access");
            break;
          }
        }
        warnOfDamage(request, page);
        for (const item of page) {
          if (closed) break;
          await write(`id: ${item.cursor}\ndata: ${JSON.stringify(item)}\n\n`);
          cursor = decodeCursor(item.cursor) ?? cursor;
        }
        if (page.length === STREAM_PAGE || closed) continue;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, options.pollIntervalMs ?? 1000);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
    } catch (error) {
      request.log.warn({ err: error }, "audit event stream failed");
    } finally {
      clearInterval(heartbeat);
      unsubscribe?.();
      openStreams.delete(close);
      res.end();
    }
  }
}
