import { setTimeout as sleep } from "node:timers/promises";
import { createPostgresDatabase } from "@keyledger/api";
import { hashKeyValue } from "@keyledger/domain";
import { encodeKeyUseReport, keyUseReportSubject } from "@keyledger/nats-bus";
import { connect } from "@nats-io/transport-node";
import { type Kysely, sql } from "kysely";
import { afterAll, beforeAll, beforeEach, describe, expect, inject, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { apiNatsOptions, startRelayAtLogHead, type TestEventStream, testEventStream } from "../support/nats";
import { TcpProxy } from "../support/tcp-proxy";

/**
 * Gateways' key-use reports go to one replica of the API's queue group (core NATS: at most once). A report the
 * server handed to a replica that is shutting down reaches no other replica, so that replica must record it before
 * it closes its pool: shutdown stops receiving reports, waits for the ones being read, then flushes the uses.
 */
describe("key-use reports while the API shuts down", () => {
  let stream: TestEventStream;
  let direct: Kysely<unknown>;
  let proxy: TcpProxy;
  let proxiedUrl: string;
  let org: string;
  let owner: string;

  beforeAll(async () => {
    stream = testEventStream();
    await startRelayAtLogHead(stream);
    direct = createPostgresDatabase({ connectionString: inject("databaseUrl"), maxConnections: 2 });
    ({ proxy, url: proxiedUrl } = await TcpProxy.inFrontOfDatabase(inject("databaseUrl")));
  });
  beforeEach(() => {
    org = uniqueId("shutdown-reports-org");
    owner = uniqueId("shutdown-reports-owner");
  });
  afterAll(async () => {
    proxy?.restore();
    await proxy?.close();
    await direct?.destroy();
    await stream?.cleanup();
  });

  async function createKeys(api: RunningApi, count: number): Promise<string[]> {
    await api.setMember(org, owner, "owner");
    const headers = { ...(await api.jwtHeaders(owner, org)), "content-type": "application/json" };
    const values: string[] = [];
    for (let i = 0; i < count; i++) {
      const created = await fetch(`${api.baseUrl}/api/api-keys`, {
        method: "POST",
        headers,
        body: JSON.stringify({ name: `reported-${i}`, permissions: [] }),
      });
      expect(created.status).toBe(201);
      values.push(((await created.json()) as { value: string }).value);
    }
    return values;
  }

  const report = (values: string[]) =>
    encodeKeyUseReport({
      uses: values.map((value) => ({ keyHash: hashKeyValue(value), usedAt: new Date().toISOString() })),
    });

  async function keysUsed(): Promise<string[]> {
    const { rows } = await sql<{ name: string }>`
      SELECT data->>'name' AS name FROM events
       WHERE event_type = 'KeyUsed' AND data->>'organizationId' = ${org}`.execute(direct);
    return rows.map((row) => row.name).sort();
  }

  it("a report whose keys are still being read when the API closes is recorded before the pool closes", async () => {
    const api = await startApi({ keyUsedThrottleMs: 0, nats: apiNatsOptions(stream), databaseUrl: proxiedUrl });
    const values = await createKeys(api, 3);
    const gateway = await connect({ servers: stream.natsUrl });
    try {
      // The API receives the report and reads its keys' rows, which Postgres (behind the stalled proxy) does not
      // answer until the API is closing.
      proxy.stall();
      gateway.publish(keyUseReportSubject(stream.subjectPrefix), report(values));
      await gateway.flush();
      await sleep(300);
      const closing = api.close();
      await sleep(500);
      proxy.restore();
      await closing;
    } finally {
      proxy.restore();
      await gateway.close();
    }
    expect(await keysUsed()).toEqual(["reported-0", "reported-1", "reported-2"]);
  });

  it("every report sent to the API until it stopped receiving is recorded (another replica gets the rest)", async () => {
    const api = await startApi({ keyUsedThrottleMs: 0, nats: apiNatsOptions(stream) });
    const values = await createKeys(api, 150);
    // A second member of the API's queue group (another replica): each report goes to it or to the API, and once
    // the API has stopped receiving, all of them go to it.
    const subject = keyUseReportSubject(stream.subjectPrefix);
    const otherReplica = await connect({ servers: stream.natsUrl });
    const gateway = await connect({ servers: stream.natsUrl });
    const toOtherReplica = new Set<string>();
    otherReplica.subscribe(subject, {
      queue: "keyledger-api",
      callback: (_error, msg) => {
        const received = JSON.parse(new TextDecoder().decode(msg.data)) as { uses: { keyHash: string }[] };
        for (const use of received.uses) toOtherReplica.add(use.keyHash);
      },
    });
    await otherReplica.flush();
    try {
      // One report per key, about one a millisecond, from just before the API starts closing until it has closed.
      let closing: Promise<void> | undefined;
      for (const [i, value] of values.entries()) {
        gateway.publish(subject, report([value]));
        await gateway.flush();
        if (i === 5) closing = api.close();
        await sleep(1);
      }
      await closing;
    } finally {
      await gateway.close();
      await otherReplica.close();
    }
    const sentToApi = values
      .map((value, i) => ({ name: `reported-${i}`, hash: hashKeyValue(value) }))
      .filter(({ hash }) => !toOtherReplica.has(hash));
    expect(sentToApi.length).toBeGreaterThan(0);
    expect(await keysUsed()).toEqual(sentToApi.map(({ name }) => name).sort());
  });
});
