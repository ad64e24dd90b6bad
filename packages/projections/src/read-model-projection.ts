import { assertNever, type KeyledgerEvent } from "@keyledger/domain";
import type { Kysely } from "kysely";
import type { ReadModelTables } from "./schema";

/**
 * The one definition of how an event changes the read model (`api_keys`, `organization_members`).
 * Used inline by the API in the appending transaction and by rebuilds from the log.
 * Idempotent: applying an event twice leaves the same rows.
 */
export async function applyToReadModel(trx: Kysely<unknown>, event: KeyledgerEvent): Promise<void> {
  const db = trx as unknown as Kysely<ReadModelTables>;
  switch (event.type) {
    case "KeyCreated": {
      const d = event.data;
      await db
        .insertInto("api_keys")
        .values({
          key_id: d.keyId,
          organization_id: d.organizationId,
          user_id: d.userId,
          name: d.name,
          key_hash: d.keyHash,
          masked_value: d.maskedValue,
          permissions: d.permissions,
          created_at: d.createdAt,
          expires_at: d.expiresAt,
          last_used_at: null,
          revoked_at: null,
          revoked_reason: null,
        })
        .onConflict((oc) => oc.column("key_id").doNothing())
        .execute();
      return;
    }
    case "KeyRevoked":
      await db
        .updateTable("api_keys")
        .set({ revoked_at: event.data.revokedAt, revoked_reason: event.data.reason })
        .where("key_id", "=", event.data.keyId)
        .where("revoked_at", "is", null)
        .execute();
      return;
    case "KeyRotated": {
      const d = event.data;
      await db
        .updateTable("api_keys")
        .set({
          key_hash: d.keyHash,
          masked_value: d.maskedValue,
          previous_key_hash: d.previousKeyHash,
          previous_valid_until: d.previousValidUntil,
          expires_at: d.expiresAt,
          rotated_at: d.rotatedAt,
        })
        .where("key_id", "=", d.keyId)
        .where("revoked_at", "is", null)
        .execute();
      return;
    }
    case "KeyUsed":
      await db
        .updateTable("api_keys")
        .set({ last_used_at: event.data.usedAt })
        .where("key_id", "=", event.data.keyId)
        .where((eb) => eb.or([eb("last_used_at", "is", null), eb("last_used_at", "<", new Date(event.data.usedAt))]))
        .execute();
      return;
    case "MemberAccessChanged": {
      const d = event.data;
      await db
        .insertInto("organization_members")
        .values({
          organization_id: d.organizationId,
          user_id: d.userId,
          role: d.role,
          permissions: d.permissions,
          updated_at: d.changedAt,
        })
        .onConflict((oc) =>
          oc.columns(["organization_id", "user_id"]).doUpdateSet({
            role: d.role,
            permissions: d.permissions,
            updated_at: d.changedAt,
          }),
        )
        .execute();
      return;
    }
    case "MemberRemoved":
      await db
        .deleteFrom("organization_members")
        .where("organization_id", "=", event.data.organizationId)
        .where("user_id", "=", event.data.userId)
        .execute();
      return;
    default:
      assertNever(event);
  }
}
