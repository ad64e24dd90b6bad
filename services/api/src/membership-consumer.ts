import { isMemberRole, isPermission, type MemberCommand } from "@keyledger/domain";
import {
  AckPolicy,
  type ConsumerMessages,
  DeliverPolicy,
  JetStreamApiError,
  type JsMsg,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { FastifyBaseLogger } from "fastify";
import type { KeyCommands } from "./commands/key-commands";
import { isStorableIdentifier } from "./identifiers";

/**
 * Membership changes published by the organizations service:
 * `<prefix>.<organizationId>.members.<userId>.updated` with `{ role, permissions }`, and `.removed`.
 */
export type MembershipConsumerConfig = {
  /** Subject prefix, default `organizations`. */
  subjectPrefix: string;
  /** Stream to create if no stream captures the subjects yet. */
  streamName: string;
  /** Durable consumer name: replicas share it, so each message is applied by one of them. */
  durableName: string;
};

/**
 * One message as the consumer received it. `position` is its place in the stream (`stream` names the stream and
 * when it was created, `sequence` is the stream sequence): for each member, the stream's order is the order of the
 * changes, and a message at or before the newest one applied for that member changes nothing.
 */
export type MembershipMessage = {
  subject: string;
  messageId: string;
  data: Uint8Array;
  position: { stream: string; sequence: number };
};

export type MembershipOutcome =
  | { status: "applied"; revokedKeys: string[]; unknownPermissions?: string[] }
  | { status: "duplicate" }
  | { status: "stale" }
  | { status: "rejected"; reason: string };

const STREAM_NOT_FOUND = 10059;
const CONSUMER_NOT_FOUND = 10014;
const decoder = new TextDecoder();

export function membershipSubjectFilter(prefix: string): string {
  return `${prefix}.*.members.*.*`;
}

/** Parses one message into a membership command, or the reason it can never be applied. */
export function parseMembershipMessage(
  prefix: string,
  message: Pick<MembershipMessage, "subject" | "data">,
  now: Date,
): { command: MemberCommand; unknownPermissions?: string[] } | { reason: string } {
  const tokens = message.subject.split(".");
  const prefixTokens = prefix.split(".").length;
  const [organizationId, members, userId, action] = tokens.slice(prefixTokens);
  if (tokens.length !== prefixTokens + 4 || members !== "members" || !organizationId || !userId) {
    return { reason: "subject is not <prefix>.<organizationId>.members.<userId>.<updated|removed>" };
  }
  if (!isStorableIdentifier(organizationId) || !isStorableIdentifier(userId)) {
    return { reason: "organization and user ids must be 1-255 characters with no control characters" };
  }
  if (action === "removed") return { command: { type: "RemoveMember", data: { organizationId, userId, now } } };
  if (action !== "updated") return { reason: `unknown action "${action}"` };
  let payload: unknown;
  try {
    payload = JSON.parse(decoder.decode(message.data));
  } catch {
    return { reason: "payload is not JSON" };
  }
  const { role, permissions } = (payload ?? {}) as { role?: unknown; permissions?: unknown };
  if (!isMemberRole(role)) return { reason: "role must be owner or member" };
  if (!Array.isArray(permissions) || !permissions.every((permission) => typeof permission === "string")) {
    return { reason: "permissions must be an array of permission names" };
  }
  // A permission this version does not know (the organizations service is newer) grants nothing here: the change
  // is applied with the known ones. Refusing the whole message would leave the member's previous access in place,
  // and a message taking permissions away (revoking keys) would then take nothing away.
  const known = permissions.filter(isPermission);
  const unknownPermissions = permissions.filter((permission) => !isPermission(permission));
  return {
    command: { type: "ChangeMemberAccess", data: { organizationId, userId, role, permissions: known, now } },
    ...(unknownPermissions.length > 0 ? { unknownPermissions } : {}),
  };
}

/**
 * Applies one membership message with the same rules as the internal HTTP routes. The message id and the member's
 * newest stream position are recorded in the applying transaction, so a redelivered message, or one older than a
 * change already applied for the member, changes nothing.
 */
export async function applyMembershipMessage(
  commands: KeyCommands,
  prefix: string,
  message: MembershipMessage,
): Promise<MembershipOutcome> {
  if (!isStorableIdentifier(message.messageId)) {
    return { status: "rejected", reason: "message id must be 1-255 characters with no control characters" };
  }
  const now = new Date();
  const parsed = parseMembershipMessage(prefix, message, now);
  if ("reason" in parsed) return { status: "rejected", reason: parsed.reason };
  const result = await commands.changeMember(
    parsed.command,
    {
      now,
      metadata: {
        actorUserId: null,
        organizationId: parsed.command.data.organizationId,
        authMethod: "internal",
        requestId: message.messageId,
      },
    },
    { messageId: message.messageId, subject: message.subject, position: message.position },
  );
  if (result.duplicate) return { status: "duplicate" };
  if (result.stale) return { status: "stale" };
  return parsed.unknownPermissions === undefined
    ? { status: "applied", revokedKeys: result.revokedKeys }
    : { status: "applied", revokedKeys: result.revokedKeys, unknownPermissions: parsed.unknownPermissions };
}

/** Finds the stream that captures the membership subjects, creating `streamName` if none does. */
async function ensureMembershipStream(nc: NatsConnection, config: MembershipConsumerConfig): Promise<string> {
  const jsm = await jetstreamManager(nc);
  const filter = membershipSubjectFilter(config.subjectPrefix);
  try {
    return await jsm.streams.find(filter);
  } catch {
    // No stream captures the subjects yet.
  }
  try {
    const info = await jsm.streams.info(config.streamName);
    await jsm.streams.update(config.streamName, { subjects: [...(info.config.subjects ?? []), filter] });
  } catch (error) {
    if (!(error instanceof JetStreamApiError) || error.code !== STREAM_NOT_FOUND) throw error;
    await jsm.streams.add({ name: config.streamName, subjects: [filter] });
  }
  return config.streamName;
}

async function ensureDurableConsumer(nc: NatsConnection, stream: string, config: MembershipConsumerConfig) {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.consumers.info(stream, config.durableName);
  } catch (error) {
    if (!(error instanceof JetStreamApiError) || error.code !== CONSUMER_NOT_FOUND) throw error;
    await jsm.consumers.add(stream, {
      durable_name: config.durableName,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subject: membershipSubjectFilter(config.subjectPrefix),
      ack_wait: 30_000_000_000,
      max_deliver: -1,
    });
  }
}

/**
 * The message's idempotency key: its `Nats-Msg-Id`, or its stream position when it has none, or one the inbox
 * cannot store (over 255 characters, control characters): such an id failed the insert at every delivery, so the
 * message was redelivered forever and never applied. The position names the stream's incarnation: a stream created
 * again restarts its sequences, and its messages must not be taken for the old stream's.
 */
function messageIdOf(message: JsMsg, streamIncarnation: string): string {
  const header = message.headers?.get("Nats-Msg-Id");
  return header && isStorableIdentifier(header) ? header : `${streamIncarnation}:${message.seq}`;
}

/**
 * Consumes membership changes from a durable JetStream consumer (at-least-once): acks after the change commits,
 * naks (redelivery later) when the database fails, terminates messages that can never be applied.
 */
export async function startMembershipConsumer(
  nc: NatsConnection,
  commands: KeyCommands,
  config: MembershipConsumerConfig,
  log: FastifyBaseLogger,
): Promise<{ stop(): Promise<void> }> {
  const stream = await ensureMembershipStream(nc, config);
  await ensureDurableConsumer(nc, stream, config);
  // A stream deleted and created again restarts its sequences: its creation time tells the two apart.
  const streamIncarnation = `${stream}@${(await (await jetstreamManager(nc)).streams.info(stream)).created}`;
  const consumer = await jetstream(nc).consumers.get(stream, config.durableName);
  const messages: ConsumerMessages = await consumer.consume({ max_messages: 64 });
  const done = (async () => {
    for await (const message of messages) {
      const input = {
        subject: message.subject,
        messageId: messageIdOf(message, streamIncarnation),
        data: message.data,
        position: { stream: streamIncarnation, sequence: message.seq },
      };
      try {
        const outcome = await applyMembershipMessage(commands, config.subjectPrefix, input);
        if (outcome.status === "rejected") {
          log.warn({ subject: message.subject, reason: outcome.reason }, "membership message rejected");
          message.term();
        } else if (outcome.status === "stale") {
          log.warn(
            { subject: message.subject, streamSequence: message.seq },
            "membership message older than the member's newest applied one; ignored",
          );
          message.ack();
        } else {
          if (outcome.status === "applied" && outcome.unknownPermissions !== undefined) {
            log.warn(
              {
                subject: message.subject,
                unknownPermissions: outcome.unknownPermissions.slice(0, 10).map((name) => name.slice(0, 64)),
                unknownCount: outcome.unknownPermissions.length,
              },
              "membership message names permissions this version does not know: applied with the known ones",
            );
          }
          log.info({ subject: message.subject, outcome: outcome.status }, "membership message applied");
          message.ack();
        }
      } catch (error) {
        log.warn({ err: error, subject: message.subject }, "membership message failed; redelivering later");
        message.nak(1_000);
      }
    }
  })();
  log.info({ stream, durable: config.durableName }, "consuming membership changes");
  return {
    async stop() {
      await messages.close();
      await done;
    },
  };
}
