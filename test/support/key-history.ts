import { randomUUID } from "node:crypto";
import { type CommandContext, KeyCommands } from "@keyledger/api";
import type { MemberRole, Permission } from "@keyledger/domain";
import { type Kysely, sql } from "kysely";

/** A small deterministic PRNG (mulberry32), so a failing history can be replayed from its seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type KeyHistoryOptions = {
  organizations: string[];
  usersPerOrganization: number;
  /** Concurrent writers. */
  writers: number;
  operationsPerWriter: number;
  seed: number;
};

export type KeyHistoryStats = { operations: number; refused: number; byKind: Record<string, number> };

const KEY_NAMES = ["ci", "deploy", "backup", "metrics"];
const SOME_PERMISSIONS: Permission[] = ["write:sandboxes", "read:volumes", "read:audit_logs", "write:registries"];

function context(organizationId: string, actorUserId: string | null): CommandContext {
  return {
    now: new Date(),
    metadata: {
      actorUserId,
      organizationId,
      authMethod: actorUserId ? "jwt" : "internal",
      requestId: randomUUID(),
    },
  };
}

/**
 * Writes a mixed history through the API's write side (`KeyCommands`: append + inline projection in one
 * transaction) with concurrent writers: memberships granted, narrowed (revoking keys), removed and re-added; keys
 * created, used, rotated, deleted and re-created under the same names, across organizations. Refusals the domain
 * makes (name taken, no such key, not a member...) are part of the history and counted.
 */
export async function writeKeyHistory(db: Kysely<unknown>, options: KeyHistoryOptions): Promise<KeyHistoryStats> {
  const commands = new KeyCommands(db);
  const stats: KeyHistoryStats = { operations: 0, refused: 0, byKind: {} };
  const users = (org: string) => Array.from({ length: options.usersPerOrganization }, (_, i) => `${org}-user-${i}`);
  for (const org of options.organizations) {
    for (const [i, user] of users(org).entries()) {
      const role: MemberRole = i === 0 ? "owner" : "member";
      await commands.changeMember(
        {
          type: "ChangeMemberAccess",
          data: { organizationId: org, userId: user, role, permissions: SOME_PERMISSIONS, now: new Date() },
        },
        context(org, null),
      );
    }
  }
  const writer = async (w: number) => {
    const random = seededRandom(options.seed * 1000 + w);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
    for (let n = 0; n < options.operationsPerWriter; n++) {
      const org = pick(options.organizations);
      const user = pick(users(org));
      const name = pick(KEY_NAMES);
      const roll = random();
      let kind: string;
      const run = async (): Promise<unknown> => {
        if (roll < 0.3) {
          kind = "create";
          const permissions = SOME_PERMISSIONS.filter(() => random() < 0.5);
          const hash = randomUUID().replaceAll("-", "") + randomUUID().replaceAll("-", "");
          return commands.createApiKey(
            {
              keyId: randomUUID(),
              organizationId: org,
              userId: user,
              name,
              keyHash: hash,
              maskedValue: `dtn${"*".repeat(20)}${hash.slice(-3)}`,
              permissions,
              expiresAt: random() < 0.3 ? new Date(Date.now() + (random() < 0.5 ? 1 : 86_400_000)) : null,
            },
            context(org, user),
          );
        }
        if (roll < 0.55) {
          if (roll < 0.42) {
            // As the API's key-use recorder does: the row as a request read it, decided on after a pause in which
            // other writers may change it.
            kind = "use-as-read";
            const read = await sql<Parameters<KeyCommands["recordKeyUsesAsRead"]>[0][number]["row"]>`
              SELECT key_id, organization_id, user_id, name, key_hash, masked_value, permissions, created_at,
                     expires_at, last_used_at, revoked_at, revoked_reason, previous_key_hash, previous_valid_until,
                     rotated_at
                FROM api_keys WHERE organization_id = ${org} AND user_id = ${user} AND name = ${name}
               ORDER BY revoked_at IS NULL DESC, created_at DESC LIMIT 1`.execute(db);
            const row = read.rows[0];
            if (row === undefined) return 0;
            await new Promise((resolve) => setTimeout(resolve, Math.floor(random() * 5)));
            return commands.recordKeyUsesAsRead([{ row, context: context(org, user) }], 0);
          }
          if (roll < 0.5) {
            kind = "use";
            return commands.recordKeyUses(
              [{ key: { organizationId: org, userId: user, name }, context: context(org, user) }],
              0,
            );
          }
          // Several of the user's keys in one batch, as the API's key-use recorder writes them.
          kind = "use-batch";
          return commands.recordKeyUses(
            KEY_NAMES.filter(() => random() < 0.5).map((batchName) => ({
              key: { organizationId: org, userId: user, name: batchName },
              context: context(org, user),
            })),
            0,
          );
        }
        if (roll < 0.7) {
          kind = "revoke";
          return commands.revokeApiKey({ organizationId: org, userId: user, name }, "deleted", context(org, user));
        }
        if (roll < 0.8) {
          kind = "rotate";
          const hash = randomUUID().replaceAll("-", "") + randomUUID().replaceAll("-", "");
          return commands.rotateApiKey(
            { organizationId: org, userId: user, name },
            {
              keyHash: hash,
              maskedValue: `dtn${"*".repeat(20)}${hash.slice(-3)}`,
              gracePeriodSeconds: Math.floor(random() * 3) * 60,
              expiresAt: undefined,
              mayExtendExpiry: true,
            },
            context(org, user),
          );
        }
        if (roll < 0.93) {
          kind = "member-change";
          const permissions = SOME_PERMISSIONS.filter(() => random() < 0.7);
          const role: MemberRole = random() < 0.2 ? "owner" : "member";
          return commands.changeMember(
            {
              type: "ChangeMemberAccess",
              data: { organizationId: org, userId: user, role, permissions, now: new Date() },
            },
            context(org, null),
          );
        }
        kind = "member-removed";
        return commands.changeMember(
          { type: "RemoveMember", data: { organizationId: org, userId: user, now: new Date() } },
          context(org, null),
        );
      };
      try {
        await run();
      } catch (error) {
        const name = (error as Error).name;
        if (name !== "DomainError" && name !== "ApiError" && name !== "StreamVersionConflict") throw error;
        stats.refused += 1;
      }
      stats.operations += 1;
      // biome-ignore lint/style/noNonNullAssertion: assigned by run()
      stats.byKind[kind!] = (stats.byKind[kind!] ?? 0) + 1;
    }
  };
  // Settle every writer before failing, so that none keeps writing into the next test.
  const settled = await Promise.allSettled(Array.from({ length: options.writers }, (_, w) => writer(w)));
  for (const result of settled) if (result.status === "rejected") throw result.reason;
  return stats;
}

/** Every row of the read model, in a stable order, as JSON-comparable values. */
export async function readModelRows(db: Kysely<unknown>): Promise<{ apiKeys: unknown[]; members: unknown[] }> {
  const apiKeys = await sql`SELECT * FROM api_keys ORDER BY key_id`.execute(db);
  const members = await sql`SELECT * FROM organization_members ORDER BY organization_id, user_id`.execute(db);
  return { apiKeys: apiKeys.rows, members: members.rows };
}
