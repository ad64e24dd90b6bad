import { randomBytes } from "node:crypto";
import { applyMembershipMessage, KeyCommands, startMembershipConsumer } from "@keyledger/api";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";

async function eventually<T>(probe: () => Promise<T>, done: (value: T) => boolean, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (done(value) || Date.now() > deadline) return value;
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe("membership changes from the organizations service over NATS", () => {
  const suffix = randomBytes(4).toString("hex");
  const config = {
    subjectPrefix: `kltest_orgs_${suffix}`,
    streamName: `KLTEST_ORGS_${suffix}`,
    durableName: "keyledger-membership",
  };
  let api: RunningApi;
  let nc: NatsConnection;
  let consumer: { stop(): Promise<void> };

  beforeAll(async () => {
    api = await startApi();
    nc = await connect({ servers: NATS_URL });
    consumer = await startMembershipConsumer(nc, new KeyCommands(api.db), config, api.app.log);
  });
  afterAll(async () => {
    await consumer?.stop();
    await (await jetstreamManager(nc)).streams.delete(config.streamName).catch(() => {});
    await nc?.close();
    await api?.close();
  });

  async function memberWithKeys(org: string, user: string) {
    await api.setMember(org, user, "member", ["write:sandboxes", "read:volumes"]);
    const headers = { ...(await api.jwtHeaders(user, org)), "content-type": "application/json" };
    const create = async (name: string, permissions: string[]) => {
      const res = await fetch(`${api.baseUrl}/api/api-keys`, {
        method: "POST",
        headers,
        body: JSON.stringify({ name, permissions }),
      });
      expect(res.status).toBe(201);
      return ((await res.json()) as { value: string }).value;
    };
    return {
      sandboxes: await create("sandboxes", ["write:sandboxes"]),
      volumes: await create("volumes", ["read:volumes"]),
    };
  }

  const status = (value: string) =>
    fetch(`${api.baseUrl}/api/api-keys/current`, { headers: { authorization: `Bearer ${value}` } }).then(
      (r) => r.status,
    );

  it("a downgrade revokes the keys holding a lost permission, and only those", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const keys = await memberWithKeys(org, user);
    const h = headers();
    h.set("Nats-Msg-Id", `downgrade-${org}`);
    await jetstream(nc).publish(
      `${config.subjectPrefix}.${org}.members.${user}.updated`,
      JSON.stringify({ role: "member", permissions: ["read:volumes"] }),
      { headers: h },
    );
    expect(
      await eventually(
        () => status(keys.sandboxes),
        (s) => s === 401,
      ),
    ).toBe(401);
    expect(await status(keys.volumes)).toBe(200);
    const reasons = await sql<{ reason: string }>`
      SELECT data->>'reason' AS reason FROM events
       WHERE event_type = 'KeyRevoked' AND data->>'organizationId' = ${org}`.execute(api.db);
    expect(reasons.rows.map((r) => r.reason)).toEqual(["permissions_unassigned"]);
  });

  it("redelivery of the same message changes nothing", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    await memberWithKeys(org, user);
    const message = {
      subject: `${config.subjectPrefix}.${org}.members.${user}.updated`,
      messageId: `redelivered-${org}`,
      data: new TextEncoder().encode(JSON.stringify({ role: "member", permissions: [] })),
      position: { stream: `test-${org}`, sequence: 1 },
    };
    const commands = new KeyCommands(api.db);
    const first = await applyMembershipMessage(commands, config.subjectPrefix, message);
    expect(first.status).toBe("applied");
    expect(first.status === "applied" && first.revokedKeys.sort()).toEqual(["sandboxes", "volumes"]);
    // The organizations service re-grants access; a late redelivery of the old message must not downgrade again.
    await api.setMember(org, user, "member", ["write:sandboxes", "read:volumes"]);
    const count = async () =>
      Number(
        (
          await sql<{ n: string }>`SELECT count(*) AS n FROM events WHERE data->>'organizationId' = ${org}`.execute(
            api.db,
          )
        ).rows[0]?.n,
      );
    const before = await count();
    expect(await applyMembershipMessage(commands, config.subjectPrefix, message)).toEqual({ status: "duplicate" });
    expect(await count()).toBe(before);
    const member = await sql<{ permissions: string[] }>`
      SELECT permissions FROM organization_members WHERE organization_id = ${org} AND user_id = ${user}`.execute(
      api.db,
    );
    expect(member.rows[0]?.permissions.sort()).toEqual(["read:volumes", "write:sandboxes"]);
  });

  it("removal revokes all of the member's keys in that organization", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const keys = await memberWithKeys(org, user);
    await jetstream(nc).publish(`${config.subjectPrefix}.${org}.members.${user}.removed`, "");
    expect(
      await eventually(
        () => status(keys.volumes),
        (s) => s === 401,
      ),
    ).toBe(401);
    expect(await status(keys.sandboxes)).toBe(401);
  });

  it("malformed messages are rejected without changing anything", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const keys = await memberWithKeys(org, user);
    const commands = new KeyCommands(api.db);
    for (const [subject, body] of [
      [`${config.subjectPrefix}.${org}.members.${user}.updated`, "{not json"],
      [`${config.subjectPrefix}.${org}.members.${user}.updated`, JSON.stringify({ role: "admin", permissions: [] })],
      [
        `${config.subjectPrefix}.${org}.members.${user}.updated`,
        JSON.stringify({ role: "member", permissions: ["read:volumes", 7] }),
      ],
      [`${config.subjectPrefix}.${org}.members.${user}.updated`, JSON.stringify({ role: "member" })],
      [`${config.subjectPrefix}.${org}.members.${user}.promoted`, "{}"],
      [`${config.subjectPrefix}.${org}.teams.${user}.updated`, "{}"],
    ] as const) {
      const outcome = await applyMembershipMessage(commands, config.subjectPrefix, {
        subject,
        messageId: `bad-${randomBytes(4).toString("hex")}`,
        data: new TextEncoder().encode(body),
        position: { stream: `test-${org}`, sequence: 1 },
      });
      expect(outcome.status, subject).toBe("rejected");
    }
    expect(await status(keys.sandboxes)).toBe(200);
  });

  it("a permission this version does not know grants nothing: the rest of the change applies, a downgrade included", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const keys = await memberWithKeys(org, user);
    // Write access taken away in a message that also names a permission of a newer organizations service: refusing
    // the whole message would leave the member's write access (and its key) in place.
    const outcome = await applyMembershipMessage(new KeyCommands(api.db), config.subjectPrefix, {
      subject: `${config.subjectPrefix}.${org}.members.${user}.updated`,
      messageId: `newer-${randomBytes(4).toString("hex")}`,
      data: new TextEncoder().encode(
        JSON.stringify({ role: "member", permissions: ["read:volumes", "write:rockets"] }),
      ),
      position: { stream: `test-${org}`, sequence: 1 },
    });
    expect(outcome).toEqual({ status: "applied", revokedKeys: ["sandboxes"], unknownPermissions: ["write:rockets"] });
    expect(await status(keys.sandboxes)).toBe(401);
    expect(await status(keys.volumes)).toBe(200);
    const member = await sql<{ permissions: string[] }>`
      SELECT permissions FROM organization_members WHERE organization_id = ${org} AND user_id = ${user}`.execute(
      api.db,
    );
    expect(member.rows[0]?.permissions).toEqual(["read:volumes"]);
  });

  it("a message id the inbox cannot store does not make the message redelivered forever: it is applied once", async () => {
    const org = uniqueId("org");
    const user = uniqueId("user");
    const keys = await memberWithKeys(org, user);
    const h = headers();
    // Random text longer than a btree entry can hold: the inbox insert fails the same way at every delivery.
    h.set("Nats-Msg-Id", randomBytes(6_000).toString("base64"));
    const poison = await jetstream(nc).publish(`${config.subjectPrefix}.${org}.members.${user}.removed`, "", {
      headers: h,
    });
    const jsm = await jetstreamManager(nc);
    const info = await eventually(
      () => jsm.consumers.info(config.streamName, config.durableName),
      (i) => i.ack_floor.stream_seq >= poison.seq && i.num_ack_pending === 0,
      5_000,
    );
    expect(info.ack_floor.stream_seq).toBeGreaterThanOrEqual(poison.seq);
    expect(info.num_redelivered).toBe(0);
    expect(await status(keys.sandboxes)).toBe(401);
    expect(await status(keys.volumes)).toBe(401);
    await api.setMember(org, user, "member", ["read:volumes"]);
    const outcome = await applyMembershipMessage(new KeyCommands(api.db), config.subjectPrefix, {
      subject: `${config.subjectPrefix}.${org}.members.${user}.removed`,
      messageId: "nul\u0000id",
      data: new Uint8Array(),
      position: { stream: `test-${org}`, sequence: 1 },
    });
    expect(outcome).toEqual({
      status: "rejected",
      reason: "message id must be 1-255 characters with no control characters",
    });
    expect(
      (
        await sql`SELECT 1 FROM organization_members WHERE organization_id = ${org} AND user_id = ${user}`.execute(
          api.db,
        )
      ).rows,
    ).toHaveLength(1);
  });

  it("owners demoted to member keep only keys within the new permissions", async () => {
    const org = uniqueId("org");
    const owner = uniqueId("owner");
    await api.setMember(org, owner, "owner");
    const headers = { ...(await api.jwtHeaders(owner, org)), "content-type": "application/json" };
    const create = async (name: string, permissions: string[]) =>
      (
        (await (
          await fetch(`${api.baseUrl}/api/api-keys`, {
            method: "POST",
            headers,
            body: JSON.stringify({ name, permissions }),
          })
        ).json()) as { value: string }
      ).value;
    const within = await create("within", ["read:volumes"]);
    const beyond = await create("beyond", ["delete:runners"]);
    await jetstream(nc).publish(
      `${config.subjectPrefix}.${org}.members.${owner}.updated`,
      JSON.stringify({ role: "member", permissions: ["read:volumes"] }),
    );
    expect(
      await eventually(
        () => status(beyond),
        (s) => s === 401,
      ),
    ).toBe(401);
    expect(await status(within)).toBe(200);
  });
});
