import {
  type ApiKeyCommand,
  type ApiKeyState,
  decideApiKey,
  decideMember,
  type EventMetadata,
  evolveApiKey,
  evolveMember,
  initialApiKeyState,
  initialMemberState,
  type KeyEvent,
  type KeyledgerEvent,
  type KeyRotated,
  type KeyUsed,
  keyStreamId,
  type MemberCommand,
  type MemberRole,
  type MemberState,
  memberStreamId,
  type Permission,
  type RevocationReason,
  revocationReasonAfterAccessChange,
} from "@keyledger/domain";
import {
  APPENDED_CTE,
  AppendNotifier,
  type AppendNotifierOptions,
  appendAtStreamEndsInOneStatement,
  appendToStream,
  appendToStreamInOneStatement,
  appendToStreams,
  type RecordedEvent,
  readStream,
  readStreams,
  type StreamAppend,
  StreamVersionConflict,
} from "@keyledger/event-store";
import {
  applyEventsToReadModel,
  applyToReadModel,
  createOnlyReadModelWrites,
  keyUsedReadModelWrite,
  type ReadModelTables,
} from "@keyledger/projections";
import { type Kysely, sql } from "kysely";
import { isRetryableConflict } from "../database-errors";
import { invalidAuthContext } from "../http-errors";
import { type ApiKeyRow, findMember } from "../read-model-queries";
import { NewKeyBatches } from "./new-key-batches";

const MAX_ATTEMPTS = 5;

/**
 * A membership message from the organizations service: its idempotency key, and its place in the stream it came
 * from (`stream` names one incarnation of the stream: a stream created again restarts its sequences).
 */
export type MembershipInboxMessage = {
  messageId: string;
  subject: string;
  position: { stream: string; sequence: number };
};

/** Called after a command's transaction commits, with the events it appended (e.g. to publish them). */
export type OnCommitted = (events: RecordedEvent[]) => void;

export type CommandContext = { metadata: EventMetadata; now: Date };

type Db = Kysely<unknown>;

/**
 * A key's state from its stream read without `KeyUsed` events, plus its last use (`KeyUsed` only changes
 * `lastUsedAt`, so the last one is all the throttle needs).
 */
function apiKeyState(events: readonly RecordedEvent[], lastUse: KeyUsed["data"] | undefined): ApiKeyState {
  const state = events.reduce((s, e) => evolveApiKey(s, e as KeyEvent), initialApiKeyState);
  return lastUse && state.status !== "absent" ? evolveApiKey(state, { type: "KeyUsed", data: lastUse }) : state;
}

/**
 * A key's state as its read-model row shows it. The row is what the key's stream folds into for the fields a
 * decision reads (it is written in the transaction of every event of the key), so a decision on it is the decision
 * on the stream, as long as the row has not changed since it was read.
 */
function apiKeyStateOfRow(row: ApiKeyRow): ApiKeyState {
  const iso = (date: Date | null) => date?.toISOString() ?? null;
  return {
    status: row.revoked_at === null ? "active" : "revoked",
    keyId: row.key_id,
    organizationId: row.organization_id,
    userId: row.user_id,
    name: row.name,
    keyHash: row.key_hash,
    previousKeyHash: row.previous_key_hash,
    previousValidUntil: iso(row.previous_valid_until),
    permissions: row.permissions as Permission[],
    createdAt: row.created_at.toISOString(),
    expiresAt: iso(row.expires_at),
    lastUsedAt: iso(row.last_used_at),
  };
}

/**
 * The keys whose read-model row still says what their use was decided on (live, same expiry, same last use),
 * locked `FOR UPDATE` until the statement commits: a concurrent revocation, rotation or use of the key either waits
 * for this one (and then sees its `KeyUsed`) or commits first, and then the use is skipped here and decided again
 * on the key's stream.
 */
function keysUnchanged(uses: readonly { streamId: string; row: ApiKeyRow }[]) {
  const decidedOn = uses.map(({ streamId, row }) => ({
    stream_id: streamId,
    key_id: row.key_id,
    expires_at: row.expires_at?.toISOString() ?? null,
    last_used_at: row.last_used_at?.toISOString() ?? null,
  }));
  return sql`SELECT d.stream_id
               FROM jsonb_to_recordset(${JSON.stringify(decidedOn)}::jsonb)
                    AS d(stream_id text, key_id uuid, expires_at timestamptz, last_used_at timestamptz)
               JOIN api_keys k
                 ON k.key_id = d.key_id AND k.revoked_at IS NULL
                AND k.expires_at IS NOT DISTINCT FROM d.expires_at AND k.last_used_at IS NOT DISTINCT FROM d.last_used_at
              ORDER BY k.key_id
                FOR UPDATE OF k`;
}

/** A key's state for decisions other than a use (no `KeyUsed` read: only the use throttle needs the last one). */
async function loadApiKey(trx: Db, streamId: string): Promise<{ state: ApiKeyState; version: number }> {
  const { version, events } = await readStream(trx, streamId, { skipTypes: ["KeyUsed"] });
  return { state: apiKeyState(events, undefined), version };
}

/** The data of each stream's last `KeyUsed` (one statement; an index scan per stream). */
async function lastKeyUses(trx: Db, streamIds: readonly string[]): Promise<Map<string, KeyUsed["data"]>> {
  const result = await sql<{ stream_id: string; data: KeyUsed["data"] }>`
    SELECT w.stream_id, u.data
      FROM unnest(${[...new Set(streamIds)]}::text[]) AS w(stream_id)
      JOIN LATERAL (SELECT data FROM events e
                     WHERE e.stream_id = w.stream_id AND e.event_type = 'KeyUsed'
                     ORDER BY e.stream_version DESC LIMIT 1) u ON true`.execute(trx);
  return new Map(result.rows.map((row) => [row.stream_id, row.data]));
}

async function loadMember(trx: Db, streamId: string): Promise<{ state: MemberState; version: number }> {
  const { version, events } = await readStream(trx, streamId);
  const state = events.reduce(
    (s, e) => (e.type === "MemberAccessChanged" || e.type === "MemberRemoved" ? evolveMember(s, e) : s),
    initialMemberState,
  );
  return { state, version };
}

/**
 * The write side: each command loads its streams, lets the domain decide, and appends the events together with
 * the read-model changes in one transaction. A concurrent append to the same stream retries with fresh state.
 */
export class KeyCommands {
  private readonly notifier: AppendNotifier;
  private readonly newKeys: NewKeyBatches;

  /**
   * `onCommitted` sees each command's events after its commit. The log's readers (projector, relay) are woken after
   * commits by an `AppendNotifier` (`notify`: its options). `onCommitting` sees the events of a command decided on
   * its stream (a revocation, rotation, membership change, a create or use decided again) just before its
   * transaction commits, which may still fail: it must not throw, and must not act on them.
   */
  constructor(
    private readonly db: Db,
    private readonly onCommitted: OnCommitted = () => {},
    notify: AppendNotifierOptions = {},
    private readonly onCommitting: OnCommitted = () => {},
  ) {
    this.notifier = new AppendNotifier(db, notify);
    this.newKeys = new NewKeyBatches(db, (events) => this.committed(events));
  }

  /** Sends a pending wake-up to the log's readers; later commands do not notify. */
  close(): Promise<void> {
    return this.notifier.close();
  }

  private committed(events: RecordedEvent[]): void {
    if (events.length === 0) return;
    this.onCommitted(events); // first: it publishes the events to the gateways
    this.notifier.appended();
  }

  private async run<T>(work: (trx: Db, appended: RecordedEvent[]) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const appended: RecordedEvent[] = [];
      try {
        const result = await this.db.transaction().execute(async (trx) => {
          const result = await work(trx, appended);
          if (appended.length > 0) this.onCommitting(appended);
          return result;
        });
        this.committed(appended);
        return result;
      } catch (error) {
        if ((error instanceof StreamVersionConflict || isRetryableConflict(error)) && attempt < MAX_ATTEMPTS) continue;
        throw error;
      }
    }
  }

  private async append(
    trx: Db,
    appended: RecordedEvent[],
    streamId: string,
    expectedVersion: number,
    events: KeyledgerEvent[],
    context: CommandContext,
  ): Promise<void> {
    if (events.length === 0) return;
    const recorded = await appendToStream(trx, streamId, expectedVersion, events, context.metadata, context.now);
    for (const event of recorded) await applyToReadModel(trx, event);
    appended.push(...recorded);
  }

  private async decideOnKey(
    trx: Db,
    appended: RecordedEvent[],
    streamId: string,
    command: ApiKeyCommand,
    context: CommandContext,
  ): Promise<KeyEvent[]> {
    const { state, version } = await loadApiKey(trx, streamId);
    const events = decideApiKey(command, state);
    await this.append(trx, appended, streamId, version, events, context);
    return events;
  }

  /**
   * Creates a key for the caller. Almost every create uses a name never used before, so the domain first decides
   * against an empty stream without reading it, with the grantor's access as authentication just read it (else read
   * here), and the key is written with the other creates of this event-loop turn in one statement (`NewKeyBatches`)
   * that checks, per key, that the stream is still new and the grantor's access unchanged (under a share lock, so a
   * concurrent downgrade either waits for the create, and then sees the new key, or makes it decide again). A create
   * that check skips is decided again on what the stream and the membership say (`createOnStream`).
   */
  async createApiKey(
    input: {
      keyId: string;
      organizationId: string;
      userId: string;
      name: string;
      keyHash: string;
      maskedValue: string;
      permissions: Permission[];
      expiresAt: Date | null;
    },
    context: CommandContext,
    grantorAsAuthenticated?: { role: MemberRole; permissions: Permission[] },
  ): Promise<KeyEvent> {
    const streamId = keyStreamId(input.organizationId, input.userId, input.name);
    const grantor = grantorAsAuthenticated ?? (await this.grantorOf(input));
    const [created] = decideApiKey(
      {
        type: "CreateKey",
        data: { ...input, grantor: { role: grantor.role, permissions: grantor.permissions }, now: context.now },
      },
      initialApiKeyState,
    );
    if (created === undefined) throw new Error("CreateKey is expected to decide one KeyCreated");
    const recorded = await this.newKeys.append({
      streamId,
      event: created,
      metadata: context.metadata,
      occurredAt: context.now,
      grantor: {
        organizationId: input.organizationId,
        userId: input.userId,
        role: grantor.role,
        permissions: grantor.permissions,
      },
    });
    if (recorded !== undefined) return created;
    return this.createOnStream(streamId, input, context);
  }

  private async grantorOf(input: { organizationId: string; userId: string }) {
    const member = await findMember(this.db, input.organizationId, input.userId);
    if (!member) throw invalidAuthContext();
    return member;
  }

  /**
   * A create the shared statement skipped (its name has history, its grantor's access changed, a create of the same
   * name shared the statement, or the statement failed): the grantor and the key's stream are read, the domain
   * decides again (a live key of that name: 409), and the append at the stream's version, its read-model row and
   * the grantor check (share lock) commit together in one statement per attempt.
   */
  private async createOnStream(
    streamId: string,
    input: Parameters<KeyCommands["createApiKey"]>[0],
    context: CommandContext,
  ): Promise<KeyEvent> {
    for (let attempt = 1; ; attempt++) {
      const grantor = await this.grantorOf(input);
      const { state, version } = await loadApiKey(this.db, streamId);
      const events = decideApiKey(
        {
          type: "CreateKey",
          data: { ...input, grantor: { role: grantor.role, permissions: grantor.permissions }, now: context.now },
        },
        state,
      );
      const readModelWrites = createOnlyReadModelWrites(events, sql`EXISTS (SELECT 1 FROM ${sql.id(APPENDED_CTE)})`);
      if (readModelWrites === undefined) throw new Error("KeyCreated is expected to only create read-model rows");
      let recorded: RecordedEvent[] | undefined;
      try {
        recorded = await appendToStreamInOneStatement(
          this.db,
          streamId,
          version,
          events,
          context.metadata,
          context.now,
          {
            onlyIf: sql`SELECT 1 FROM organization_members
                       WHERE organization_id = ${input.organizationId} AND user_id = ${input.userId}
                         AND role = ${grantor.role} AND permissions = ${sql.val(grantor.permissions)}::text[]
                         FOR SHARE`,
            alsoWrite: readModelWrites,
          },
        );
      } catch (error) {
        if ((error instanceof StreamVersionConflict || isRetryableConflict(error)) && attempt < MAX_ATTEMPTS) continue;
        throw error;
      }
      if (recorded === undefined) {
        // The grantor's access changed (or they left) after it was read: read it again and decide again.
        if (attempt >= MAX_ATTEMPTS) throw new StreamVersionConflict(streamId);
        continue;
      }
      this.committed(recorded);
      return events[0] as KeyEvent;
    }
  }

  revokeApiKey(
    key: { organizationId: string; userId: string; name: string },
    reason: RevocationReason,
    context: CommandContext,
  ): Promise<void> {
    return this.run(async (trx, appended) => {
      const streamId = keyStreamId(key.organizationId, key.userId, key.name);
      await this.decideOnKey(
        trx,
        appended,
        streamId,
        { type: "RevokeKey", data: { reason, now: context.now } },
        context,
      );
    });
  }

  /**
   * Gives a live key a new value. The previous value keeps working for the grace period (never past its own
   * expiry). If another rotation commits between our read and our append, this one fails with 409 rather than
   * rotating twice.
   */
  rotateApiKey(
    key: { organizationId: string; userId: string; name: string },
    change: {
      keyHash: string;
      maskedValue: string;
      gracePeriodSeconds: number;
      expiresAt: Date | null | undefined;
      /** False when the key rotates itself: it may keep or shorten its expiry, never extend it. */
      mayExtendExpiry: boolean;
      expectedKeyHash?: string;
    },
    context: CommandContext,
  ): Promise<{ event: KeyRotated; permissions: Permission[] }> {
    let expectedKeyHash = change.expectedKeyHash;
    return this.run(async (trx, appended) => {
      const streamId = keyStreamId(key.organizationId, key.userId, key.name);
      const { state, version } = await loadApiKey(trx, streamId);
      if (expectedKeyHash === undefined && state.status === "active") expectedKeyHash = state.keyHash;
      const events = decideApiKey({ type: "RotateKey", data: { ...change, expectedKeyHash, now: context.now } }, state);
      await this.append(trx, appended, streamId, version, events, context);
      const permissions = state.status === "absent" ? [] : state.permissions;
      return { event: events[0] as KeyRotated, permissions };
    });
  }

  /**
   * Records many keys' uses in one transaction (a fixed number of statements, whatever their number): each key's
   * stream and last `KeyUsed` are read, the domain decides each use (throttle, expiry, revoked), and the resulting
   * `KeyUsed` events are appended together with their read-model changes. Returns how many were appended.
   */
  recordKeyUses(
    uses: readonly {
      /** `keyId`, when given: the key that was used (nothing is recorded if the name holds another key now). */
      key: { organizationId: string; userId: string; name: string; keyId?: string };
      context: CommandContext;
    }[],
    throttleMs: number,
  ): Promise<number> {
    return this.run(async (trx, appended) => {
      const streamIds = uses.map(({ key }) => keyStreamId(key.organizationId, key.userId, key.name));
      const reads = await readStreams(trx, streamIds, { skipTypes: ["KeyUsed"] });
      const lastUses = await lastKeyUses(trx, streamIds);
      const appends: StreamAppend[] = [];
      const appending = new Set<string>();
      uses.forEach(({ key, context }, i) => {
        const streamId = streamIds[i] as string;
        const read = reads.get(streamId) ?? { version: 0, events: [] };
        const state = apiKeyState(read.events, lastUses.get(streamId));
        const events = decideApiKey(
          { type: "RecordKeyUse", data: { usedAt: context.now, throttleMs, keyId: key.keyId } },
          state,
        );
        if (events.length > 0 && !appending.has(streamId)) {
          appending.add(streamId);
          appends.push({
            streamId,
            expectedVersion: read.version,
            events,
            metadata: context.metadata,
            occurredAt: context.now,
          });
        }
      });
      const recorded = await appendToStreams(trx, appends);
      await applyEventsToReadModel(trx, recorded);
      appended.push(...recorded);
      return recorded.length;
    });
  }

  /**
   * Records uses of keys as the request that used each read its read-model row (the API's key-use recorder): the
   * domain decides each use on the row, and one statement appends the resulting `KeyUsed` events with their
   * read-model change, each only if its row has not changed since it was read (`keysUnchanged`), and commits. A
   * use whose row changed (revoked, rotated, used through another replica) is decided again on its stream by
   * `recordKeyUses`. Against `recordKeyUses` for every use: one round trip instead of eight, and no reads of the
   * streams (1,000,000 keys, batches of 50 first uses: 11.8 ms against 20.1 ms). Returns how many were appended.
   */
  async recordKeyUsesAsRead(
    uses: readonly { row: ApiKeyRow; context: CommandContext }[],
    throttleMs: number,
  ): Promise<number> {
    const decided: { streamId: string; row: ApiKeyRow; event: KeyUsed; context: CommandContext }[] = [];
    const deciding = new Set<string>();
    const sharingAStream: { row: ApiKeyRow; context: CommandContext }[] = [];
    for (const { row, context } of uses) {
      const streamId = keyStreamId(row.organization_id, row.user_id, row.name);
      const [event] = decideApiKey(
        { type: "RecordKeyUse", data: { usedAt: context.now, throttleMs, keyId: row.key_id } },
        apiKeyStateOfRow(row),
      );
      if (event === undefined) continue;
      // The statement's guard is per stream: a second key of the same stream (a revoked key's name now held by
      // another) is decided on the stream instead.
      if (deciding.has(streamId)) sharingAStream.push({ row, context });
      else {
        deciding.add(streamId);
        decided.push({ streamId, row, event: event as KeyUsed, context });
      }
    }
    let recorded: (RecordedEvent | undefined)[];
    try {
      recorded = await appendAtStreamEndsInOneStatement(
        this.db,
        decided.map(({ streamId, event, context }) => ({
          streamId,
          event,
          metadata: context.metadata,
          occurredAt: context.now,
        })),
        { onlyStreams: keysUnchanged(decided), alsoWrite: [keyUsedReadModelWrite(sql.id(APPENDED_CTE))] },
      );
    } catch (error) {
      // A deadlock or serialization failure wrote nothing: every use is decided again on its stream.
      if (!isRetryableConflict(error)) throw error;
      recorded = decided.map(() => undefined);
    }
    const appended = recorded.filter((event): event is RecordedEvent => event !== undefined);
    this.committed(appended);
    const skipped = [...decided.filter((_, i) => recorded[i] === undefined), ...sharingAStream];
    if (skipped.length === 0) return appended.length;
    const again = await this.recordKeyUses(
      skipped.map(({ row, context }) => ({
        key: { organizationId: row.organization_id, userId: row.user_id, name: row.name, keyId: row.key_id },
        context,
      })),
      throttleMs,
    );
    return appended.length + again;
  }

  /**
   * Sets or removes a member's access and, in the same transaction, revokes every live key of theirs in the
   * organization that the new access no longer covers. With `inbox`, the message id is recorded in the same
   * transaction and a message already processed changes nothing (`duplicate`); so does a message at or before the
   * member's newest applied one of the same stream (`stale`: redelivered, or applied late by another replica).
   */
  changeMember(
    command: MemberCommand,
    context: CommandContext,
    inbox?: MembershipInboxMessage,
  ): Promise<{ revokedKeys: string[]; duplicate: boolean; stale: boolean }> {
    return this.run(async (trx, appended) => {
      const { organizationId, userId } = command.data;
      if (inbox) {
        const fresh = await sql`
          INSERT INTO inbox (message_id, subject) VALUES (${inbox.messageId}, ${inbox.subject})
          ON CONFLICT (message_id) DO NOTHING RETURNING message_id`.execute(trx);
        if (fresh.rows.length === 0) return { revokedKeys: [], duplicate: true, stale: false };
        // Takes the member's position row lock: a concurrent message of the same member waits, then compares with
        // the position this one committed.
        const newest = await sql`
          INSERT INTO membership_message_positions AS p (organization_id, user_id, stream, stream_sequence)
          VALUES (${organizationId}, ${userId}, ${inbox.position.stream}, ${inbox.position.sequence})
          ON CONFLICT (organization_id, user_id) DO UPDATE
            SET stream = EXCLUDED.stream, stream_sequence = EXCLUDED.stream_sequence, applied_at = now()
            WHERE p.stream <> EXCLUDED.stream OR p.stream_sequence < EXCLUDED.stream_sequence
          RETURNING 1 AS newest`.execute(trx);
        if (newest.rows.length === 0) return { revokedKeys: [], duplicate: false, stale: true };
      }
      await findMember(trx, organizationId, userId, "update");
      const streamId = memberStreamId(organizationId, userId);
      const { state, version } = await loadMember(trx, streamId);
      const events = decideMember(command, state);
      if (events.length === 0) return { revokedKeys: [], duplicate: false, stale: false };
      await this.append(trx, appended, streamId, version, events, context);
      const after = events.reduce(evolveMember, state);
      const liveKeys = await (trx as unknown as Kysely<ReadModelTables>)
        .selectFrom("api_keys")
        .select(["name", "permissions"])
        .where("organization_id", "=", organizationId)
        .where("user_id", "=", userId)
        .where("revoked_at", "is", null)
        .execute();
      const revokedKeys: string[] = [];
      for (const key of liveKeys) {
        const reason = revocationReasonAfterAccessChange(after, key.permissions as Permission[]);
        if (reason === null) continue;
        await this.decideOnKey(
          trx,
          appended,
          keyStreamId(organizationId, userId, key.name),
          { type: "RevokeKey", data: { reason, now: context.now } },
          context,
        );
        revokedKeys.push(key.name);
      }
      return { revokedKeys, duplicate: false, stale: false };
    });
  }
}
