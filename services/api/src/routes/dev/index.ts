import { PERMISSIONS, type Permission } from "@keyledger/domain";
import { Type } from "@sinclair/typebox";
import type { FastifyInstance, FastifyRequest } from "fastify";
import type { KeyCommands } from "../../commands/key-commands";
import type { DevIssuer } from "../../dev-issuer";
import { ApiError } from "../../http-errors";
import { identifierString } from "../../identifiers";

export type DevIssuerRoutesOptions = { issuer: DevIssuer; commands: KeyCommands };

const LOOPBACK = new Set(["127.0.0.1", "::1", "::ffff:127.0.0.1"]);

const DevTokenBody = Type.Object(
  {
    userId: identifierString(),
    organizationId: identifierString(),
    role: Type.Union([Type.Literal("owner"), Type.Literal("member")]),
    permissions: Type.Optional(Type.Array(Type.String({ enum: [...PERMISSIONS] }), { maxItems: 64 })),
    expiresInSeconds: Type.Optional(Type.Integer({ minimum: 60, maximum: 30 * 24 * 3600 })),
  },
  { additionalProperties: false },
);

const DEFAULT_TOKEN_LIFETIME_SECONDS = 12 * 3600;

/**
 * Routes that exist only while the API is its own development issuer (no OIDC configured, not production):
 * the issuer's discovery document and keys, and `POST /dev/tokens`, which records a membership and signs a JWT
 * for it. `pnpm keyledger dev-token` calls the latter; it answers only clients on this machine.
 */
export default async function devIssuerRoutes(app: FastifyInstance, options: DevIssuerRoutesOptions) {
  const { issuer, commands } = options;

  app.get("/.well-known/jwks.json", { schema: { hide: true } }, async () => issuer.jwks);
  app.get("/.well-known/openid-configuration", { schema: { hide: true } }, async () => issuer.openidConfiguration());

  const onlyFromThisMachine = async (request: FastifyRequest) => {
    if (!LOOPBACK.has(request.socket.remoteAddress ?? "")) {
      throw new ApiError(403, "Development tokens are issued only to clients on this machine");
    }
  };

  app.post(
    "/dev/tokens",
    { onRequest: onlyFromThisMachine, schema: { hide: true, body: DevTokenBody } },
    async (request) => {
      const body = request.body as {
        userId: string;
        organizationId: string;
        role: "owner" | "member";
        permissions?: Permission[];
        expiresInSeconds?: number;
      };
      const now = new Date();
      await commands.changeMember(
        {
          type: "ChangeMemberAccess",
          data: {
            organizationId: body.organizationId,
            userId: body.userId,
            role: body.role,
            permissions: body.permissions ?? [],
            now,
          },
        },
        {
          now,
          metadata: {
            actorUserId: null,
            organizationId: body.organizationId,
            authMethod: "internal",
            requestId: request.id,
          },
        },
      );
      const { token, expiresAt } = await issuer.sign(
        body.userId,
        body.expiresInSeconds ?? DEFAULT_TOKEN_LIFETIME_SECONDS,
      );
      request.log.info(
        { userId: body.userId, organizationId: body.organizationId, role: body.role },
        "development token issued",
      );
      return {
        token,
        tokenType: "Bearer",
        expiresAt: expiresAt.toISOString(),
        issuer: issuer.issuer,
        userId: body.userId,
        organizationId: body.organizationId,
        role: body.role,
      };
    },
  );
}
