import { createHash, timingSafeEqual } from "node:crypto";
import { PERMISSIONS } from "@keyledger/domain";
import { Type } from "@sinclair/typebox";
import type { FastifyInstance, FastifyRequest } from "fastify";
import type { KeyCommands } from "../../commands/key-commands";
import { ApiError } from "../../http-errors";
import { identifierString } from "../../identifiers";

export type InternalRoutesOptions = { commands: KeyCommands; internalApiToken: string };

const MemberParams = Type.Object({
  organizationId: identifierString(),
  userId: identifierString(),
});
const MemberAccessBody = Type.Object(
  {
    role: Type.Union([Type.Literal("owner"), Type.Literal("member")]),
    permissions: Type.Array(Type.String({ enum: [...PERMISSIONS] }), { maxItems: 64 }),
  },
  { additionalProperties: false },
);

/** Constant time in both content and length: compares SHA-256 digests, always 32 bytes, so no early exit. */
function sameToken(given: string, expected: string): boolean {
  const digest = (token: string) => createHash("sha256").update(token).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/**
 * Membership changes from the organizations service (bearer `INTERNAL_API_TOKEN`). A change that takes
 * permissions away revokes the member's keys holding them; removal revokes all their keys in the organization.
 */
export default async function internalMemberRoutes(app: FastifyInstance, options: InternalRoutesOptions) {
  const authenticate = async (request: FastifyRequest) => {
    const header = request.headers.authorization;
    const token = typeof header === "string" ? /^Bearer\s+(\S+)$/i.exec(header)?.[1] : undefined;
    if (!token || !sameToken(token, options.internalApiToken)) throw new ApiError(401, "Invalid credentials");
  };
  const context = (request: FastifyRequest, organizationId: string) => ({
    now: new Date(),
    metadata: { actorUserId: null, organizationId, authMethod: "internal" as const, requestId: request.id },
  });

  app.put(
    "/internal/organizations/:organizationId/members/:userId",
    { onRequest: authenticate, schema: { hide: true, params: MemberParams, body: MemberAccessBody } },
    async (request, reply) => {
      const { organizationId, userId } = request.params as { organizationId: string; userId: string };
      const body = request.body as { role: "owner" | "member"; permissions: (typeof PERMISSIONS)[number][] };
      await options.commands.changeMember(
        {
          type: "ChangeMemberAccess",
          data: { organizationId, userId, role: body.role, permissions: body.permissions, now: new Date() },
        },
        context(request, organizationId),
      );
      return reply.code(204).send();
    },
  );

  app.delete(
    "/internal/organizations/:organizationId/members/:userId",
    { onRequest: authenticate, schema: { hide: true, params: MemberParams } },
    async (request, reply) => {
      const { organizationId, userId } = request.params as { organizationId: string; userId: string };
      await options.commands.changeMember(
        { type: "RemoveMember", data: { organizationId, userId, now: new Date() } },
        context(request, organizationId),
      );
      return reply.code(204).send();
    },
  );
}
