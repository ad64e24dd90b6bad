import { once } from "node:events";
import type { ServerResponse } from "node:http";
import { decodeCursor, encodeCursor, listOrganizationEvents, SEALED_CHANNEL } from "@keyledger/audit-log";
import type { NotificationSource } from "@keyledger/projections";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Kysely } from "kysely";
import { ApiError, invalidCredentials } from "../../http-errors";
import type { AuthContext } from "../../plugins/app/authentication";
import { errorResponses } from "../api-keys/schemas";
import { ApiKeyEventPageSchema, ApiKeyEventsQuerySchema, DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE } from "./schemas";

export type ApiKeyEventRoutesOptions = {
  db: Kysely<unknown>;
  /** Wakes event streams when the chain grows (`keyledger_sealed`); without it they poll. */
  notifications?: NotificationSource;
  /** How often an event stream looks for new events without a notification (ms). */
  pollIntervalMs?: number;
  /** Comment line sent on idle event streams, so proxies keep them open (ms). */
  heartbeatMs?: number;
};

const STREAM_PAGE = 500;

/** Owners, members holding `read:audit_logs`, and API keys holding `read:audit_logs`. */
function mayReadAuditLog(auth: AuthContext): boolean {
  if (auth.method === "jwt") return auth.role === "owner" || auth.memberPermissions.includes("read:audit_logs");
  return (auth.key.permissions as readonly string[]).includes("read:audit_logs");
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
      const lastEventId = request.headers["last-event-id"];
      const given =
        query.after ?? (wantsEventStream(request) && typeof lastEventId === "string" ? lastEventId : undefined);
      const after = given === undefined ? "0" : decodeCursor(given);
      if (after === undefined) throw new ApiError(400, "after must be a cursor returned by this API");
      const limit = query.limit === undefined ? DEFAULT_EVENTS_PAGE : Number(query.limit);
      if (limit < 1 || limit > MAX_EVENTS_PAGE)
        throw new ApiError(400, `limit must be between 1 and ${MAX_EVENTS_PAGE}`);

      if (wantsEventStream(request)) return streamEvents(request, reply, auth.organizationId, after);

      const rows = await listOrganizationEvents(options.db, {
        organizationId: auth.organizationId,
        after,
        limit: limit + 1,
      });
      const items = rows.slice(0, limit);
      return {
        items,
        nextCursor: items[items.length - 1]?.cursor ?? encodeCursor(after),
        hasMore: rows.length > limit,
      };
    },
  );

  async function streamEvents(request: FastifyRequest, reply: FastifyReply, organizationId: string, from: string) {
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
    try {
      await write("retry: 2000\n\n");
      while (!closed) {
        const page = await listOrganizationEvents(options.db, { organizationId, after: cursor, limit: STREAM_PAGE });
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
