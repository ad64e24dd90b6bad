import { randomBytes } from "node:crypto";
import { applyMembershipMessage, KeyCommands, startMembershipConsumer } from "@keyledger/api";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";

/** A database that fails once for each message id given, as a dropped connection does (the consumer naks it). */
class FailingOnceFor extends KeyCommands {
  readonly failOnce = new Set<string>();
  override changeMember(...args: Parameters<KeyCommands["changeMember"]>) {
    const inbox = args[2];
    if (inbox && this.failOnce.delete(inbox.messageId)) {
      return Promise.reject(Object.assign(new Error("Connection terminated unexpectedly"), { code: "57P01" }));
    }
    return super.changeMember(...args);
  }
}

/**
 * JetStream delivers at least once and not in order once a message is redelivered (a nak, an ack timeout, another
 * replica of the shared consumer): a membership message older than one already applied for the same member must
 * change nothing.
 */
describe("membership messages applied out of order", () => {
  const suffix = randomBytes(4).toString("hex");
  const config = {
    subjectPrefix: `kltest_order_${suffix}`,
    streamName: `KLTEST_ORDER_${suffix}`,
    durableName: "keyledger-membership",
  };
  let api: RunningApi;
  let nc: NatsConnection;
  let commands: FailingOnceFor;
  let consumer: { stop(): Promise<void> };

  beforeAll(async () => {
    api = await startApi();
    nc = await connect({ servers: NATS_URL });
    commands = new FailingOnceFor(api.db);
    consumer = await startMembershipConsumer(nc, commands, config, api.app.log);
  });
  afterAll(async () => {
    await consumer?.stop();
    await (await jetstreamManager(nc)).streams.delete(config.streamName).catch(() => {});
    await nc?.close();
    await api?.close();
  });

  async function publish(subject: string, body: string, messageId: string) {
    const h = headers();
    h.set("Nats-Msg-Id", messageId);
    return jetstream(nc).publish(`${config.subjectPrefix}.${subject}`, body, { headers: h });
  }

  /** Waits until the consumer has acknowledged every message of the stream (redeliveries included). */
  async function drained(lastSequence: number) {
    const jsm = await jetstreamManager(nc);
    const deadline = Date.now() + 15_000;
    for (;;) {
      const info = await jsm.consumers.info(config.streamName, config.durableName);
      if (info.ack_floor.stream_seq >= lastSequence && info.num_ack_pending === 0) return;
      if (Date.now() > deadline) throw new Error(`consumer not drained: ${JSON.stringify(info.ack_floor)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  const memberRow = async (org: string, user: string) =>
    (
      await sql<{ role: string; permissions: string[] }>`
        SELECT role, permissions FROM organization_members WHERE organization_id = ${org} AND user_id = ${user}`.execute(
        api.db,
      )
    ).rows[0];

  it("an .updated redelivered after a newer .removed does not give the removed member access back", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "member", ["read:volumes"]);
    const grant = `grant-${org}`;
    commands.failOnce.add(grant);
    await publish(
      `${org}.members.${user}.updated`,
      JSON.stringify({ role: "member", permissions: ["read:volumes", "write:sandboxes"] }),
      grant,
    );
    const removal = await publish(`${org}.members.${user}.removed`, "", `remove-${org}`);
    await drained(removal.seq);
    expect(commands.failOnce.has(grant)).toBe(false);
    expect(await memberRow(org, user)).toBeUndefined();
    const headers = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
    const created = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers,
      body: JSON.stringify({ name: "after-removal", permissions: ["write:sandboxes"] }),
    });
    expect(created.status).toBe(403);
  });

  it("an older .updated redelivered after a newer one does not undo it", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await api.setMember(org, user, "member", ["read:volumes"]);
    const older = `older-${org}`;
    commands.failOnce.add(older);
    await publish(`${org}.members.${user}.updated`, JSON.stringify({ role: "owner", permissions: [] }), older);
    const newer = await publish(
      `${org}.members.${user}.updated`,
      JSON.stringify({ role: "member", permissions: ["read:volumes"] }),
      `newer-${org}`,
    );
    await drained(newer.seq);
    expect(commands.failOnce.has(older)).toBe(false);
    expect(await memberRow(org, user)).toEqual({ role: "member", permissions: ["read:volumes"] });
  });

  it("replicas applying one member's messages concurrently end on the newest, whatever order they commit in", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const stream = `incarnation-${org}`;
    const plain = new KeyCommands(api.db);
    const permissionsOf = (sequence: number) => (sequence % 2 === 0 ? ["read:volumes"] : ["write:sandboxes"]);
    const sequences = Array.from({ length: 12 }, (_, i) => i + 1).sort(() => Math.random() - 0.5);
    const outcomes = await Promise.all(
      sequences.map((sequence) =>
        applyMembershipMessage(plain, config.subjectPrefix, {
          subject: `${config.subjectPrefix}.${org}.members.${user}.updated`,
          messageId: `${stream}-${sequence}`,
          data: new TextEncoder().encode(JSON.stringify({ role: "member", permissions: permissionsOf(sequence) })),
          position: { stream, sequence },
        }),
      ),
    );
    expect(outcomes.every((o) => o.status === "applied" || o.status === "stale")).toBe(true);
    expect(await memberRow(org, user)).toEqual({ role: "member", permissions: permissionsOf(12) });
    // A removal older than the newest change is ignored; the stream created again restarts its sequences.
    const removal = (position: { stream: string; sequence: number }) =>
      applyMembershipMessage(plain, config.subjectPrefix, {
        subject: `${config.subjectPrefix}.${org}.members.${user}.removed`,
        messageId: `${position.stream}-removed-${position.sequence}`,
        data: new Uint8Array(),
        position,
      });
    expect(await removal({ stream, sequence: 5 })).toEqual({ status: "stale" });
    expect(await memberRow(org, user)).toEqual({ role: "member", permissions: permissionsOf(12) });
    expect(await removal({ stream: `${stream}-again`, sequence: 1 })).toEqual({ status: "applied", revokedKeys: [] });
    expect(await memberRow(org, user)).toBeUndefined();
  });
});

describe("membership messages after the stream is created again", () => {
  const suffix = randomBytes(4).toString("hex");
  const config = {
    subjectPrefix: `kltest_again_${suffix}`,
    streamName: `KLTEST_AGAIN_${suffix}`,
    durableName: "keyledger-membership",
  };
  let api: RunningApi;
  let nc: NatsConnection;

  beforeAll(async () => {
    api = await startApi();
    nc = await connect({ servers: NATS_URL });
  });
  afterAll(async () => {
    await (await jetstreamManager(nc)).streams.delete(config.streamName).catch(() => {});
    await nc?.close();
    await api?.close();
  });

  async function consumeUntilAcked(subject: string, body: string) {
    const consumer = await startMembershipConsumer(nc, new KeyCommands(api.db), config, api.app.log);
    try {
      // Without Nats-Msg-Id: the consumer keys the message by its stream position.
      const published = await jetstream(nc).publish(`${config.subjectPrefix}.${subject}`, body);
      const jsm = await jetstreamManager(nc);
      const deadline = Date.now() + 15_000;
      for (;;) {
        const info = await jsm.consumers.info(config.streamName, config.durableName);
        if (info.ack_floor.stream_seq >= published.seq && info.num_ack_pending === 0) return published.seq;
        if (Date.now() > deadline) throw new Error("message not acknowledged");
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      await consumer.stop();
    }
  }

  it("a removal at a sequence the old stream used is applied, not taken for that old message", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const first = await consumeUntilAcked(
      `${org}.members.${user}.updated`,
      JSON.stringify({ role: "member", permissions: ["read:volumes"] }),
    );
    expect(first).toBe(1);
    await (await jetstreamManager(nc)).streams.delete(config.streamName);
    const again = await consumeUntilAcked(`${org}.members.${user}.removed`, "");
    expect(again).toBe(1);
    const member = await sql`
      SELECT 1 FROM organization_members WHERE organization_id = ${org} AND user_id = ${user}`.execute(api.db);
    expect(member.rows).toEqual([]);
  });
});
