import type { KeyEvent, MemberRole, Permission } from "@keyledger/domain";
import {
  APPENDED_CTE,
  appendToNewStreamsInOneStatement,
  type NewStreamAppend,
  type RecordedEvent,
} from "@keyledger/event-store";
import { createOnlyReadModelWrites } from "@keyledger/projections";
import { type Kysely, sql } from "kysely";
import { isDatabaseUnavailable, isRetryableConflict } from "../database-errors";

/** A create the domain has decided against an empty stream, with the grantor's access it was decided on. */
export type NewKey = NewStreamAppend<KeyEvent> & {
  grantor: { organizationId: string; userId: string; role: MemberRole; permissions: Permission[] };
};

/** At most this many creates share a statement (more wait for the next one, started at once). */
const MAX_BATCH = 64;

/**
 * The grantors whose membership row still says what their creates were decided on, locked `FOR SHARE` until the
 * statement commits: a concurrent downgrade or removal either waits for the creates (and then sees the new keys) or
 * commits first, and then their creates are skipped here and decided again.
 */
function grantorsUnchanged(keys: readonly NewKey[]) {
  const grantors = keys.map((key) => ({
    stream_id: key.streamId,
    organization_id: key.grantor.organizationId,
    user_id: key.grantor.userId,
    role: key.grantor.role,
    permissions: key.grantor.permissions,
  }));
  return sql`SELECT g.stream_id
               FROM jsonb_to_recordset(${JSON.stringify(grantors)}::jsonb)
                    AS g(stream_id text, organization_id text, user_id text, role text, permissions text[])
               JOIN organization_members m
                 ON m.organization_id = g.organization_id AND m.user_id = g.user_id
                AND m.role = g.role AND m.permissions = g.permissions
                FOR SHARE OF m`;
}

/**
 * Key creations that arrive in the same turn of the event loop are written together: one statement appends each
 * key's `KeyCreated` as the first event of its stream, with its read-model row and the grantor check, and commits
 * once for all (a statement and a commit per create cost the database about 3× the CPU per create at 8 per
 * statement here; BENCHMARKS.md). Each create keeps its own outcome: `append` resolves with the recorded event, or
 * `undefined` when that create was not written (its name has history, its grantor's access changed, or the shared
 * statement failed) and must be decided again on its own.
 */
export class NewKeyBatches {
  private pending: { key: NewKey; done: (recorded: RecordedEvent | undefined, error?: unknown) => void }[] = [];
  private scheduled: NodeJS.Immediate | undefined;

  constructor(
    private readonly db: Kysely<unknown>,
    private readonly committed: (events: RecordedEvent[]) => void,
  ) {}

  append(key: NewKey): Promise<RecordedEvent | undefined> {
    return new Promise((resolve, reject) => {
      this.pending.push({ key, done: (recorded, error) => (error === undefined ? resolve(recorded) : reject(error)) });
      this.scheduled ??= setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    this.scheduled = undefined;
    while (this.pending.length > 0) void this.write(this.pending.splice(0, MAX_BATCH));
  }

  private async write(batch: typeof this.pending): Promise<void> {
    const keys = batch.map((entry) => entry.key);
    let recorded: (RecordedEvent | undefined)[];
    try {
      const readModelWrites = createOnlyReadModelWrites(
        keys.map((key) => key.event),
        sql`k.key_id IN (SELECT (a.data->>'keyId')::uuid FROM ${sql.id(APPENDED_CTE)} a)`,
      );
      if (readModelWrites === undefined) throw new Error("KeyCreated is expected to only create read-model rows");
      recorded = await appendToNewStreamsInOneStatement(this.db, keys, {
        onlyStreams: grantorsUnchanged(keys),
        alsoWrite: readModelWrites,
      });
    } catch (error) {
      // A deadlock or serialization failure wrote nothing: each create is tried again on its own. The database
      // could not be reached, or the connection was lost (then whether the statement committed is unknown): every
      // create fails as one on its own would (503), rather than be decided again against what may be its own key.
      // Any other failure wrote nothing: a create alone fails as it would have on its own; creates that shared the
      // statement are each decided again on their own, so none fails for another's sake.
      const fails = !isRetryableConflict(error) && (isDatabaseUnavailable(error) || batch.length === 1);
      for (const entry of batch) entry.done(undefined, fails ? error : undefined);
      return;
    }
    try {
      this.committed(recorded.filter((event): event is RecordedEvent => event !== undefined));
    } catch (error) {
      // As for a create on its own: what runs after the commit failed, and each written create's caller hears of
      // it (the skipped ones are still decided again).
      batch.forEach((entry, i) => {
        entry.done(undefined, recorded[i] === undefined ? undefined : error);
      });
      return;
    }
    batch.forEach((entry, i) => {
      entry.done(recorded[i]);
    });
  }
}
