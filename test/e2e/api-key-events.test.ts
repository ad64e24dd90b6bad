import { PgNotificationListener, Projector } from "@keyledger/projections";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type RunningApi, startApi, uniqueId } from "../support/api-harness";
import { until } from "../support/until";

type AuditItem = {
  cursor: string;
  position: string;
  eventId: string;
  type: string;
  occurredAt: string;
  actor: { userId: string | null; authMethod: string | null; requestId: string | null };
  stream: { id: string; version: number };
  data: Record<string, unknown>;
  hash: string;
};
type Page = { items: AuditItem[]; nextCursor: string; hasMore: boolean };

describe("GET /api/api-key-events (the organization's audit log)", () => {
  let api: RunningApi;
  let listener: PgNotificationListener;
  let projector: Projector;
  const org = uniqueId("audit-org");
  const other = uniqueId("audit-other");
  const owner = uniqueId("owner");
  const auditor = uniqueId("auditor");
  const plain = uniqueId("plain");
  let ownerHeaders: Record<string, string>;
  let auditKey: string;
  let plainKey: string;

  const get = (query: string, headers: Record<string, string>) =>
    fetch(`${api.baseUrl}/api/api-key-events${query}`, { headers });
  const page = async (query: string, headers = ownerHeaders): Promise<Page> => {
    const res = await get(query, headers);
    expect(res.status, await res.clone().text()).toBe(200);
    return (await res.json()) as Page;
  };
  const all = async (headers = ownerHeaders): Promise<AuditItem[]> => {
    const items: AuditItem[] = [];
    for (let cursor = ""; ; ) {
      const result = await page(`?limit=1000${cursor ? `&after=${cursor}` : ""}`, headers);
      items.push(...result.items);
      cursor = result.nextCursor;
      if (!result.hasMore) return items;
    }
  };
  const createKey = async (organizationId: string, userId: string, name: string, permissions: string[]) => {
    const res = await fetch(`${api.baseUrl}/api/api-keys`, {
      method: "POST",
      headers: { ...(await api.jwtHeaders(userId, organizationId)), "content-type": "application/json" },
      body: JSON.stringify({ name, permissions }),
    });
    expect(res.status).toBe(201);
    return ((await res.json()) as { value: string }).value;
  };
  /** Waits until the organization's log shows `count` events (the projector seals them after commit). */
  const sealed = (count: number) =>
    until(`${count} sealed events`, async () => {
      const items = await all();
      return items.length >= count ? items : undefined;
    });

  beforeAll(async () => {
    listener = new PgNotificationListener({ connectionString: inject("databaseUrl") });
    api = await startApi({ notifications: listener });
    projector = new Projector({ db: api.db, notifications: listener, pollIntervalMs: 200 });
    projector.start();
    await api.setMember(org, owner, "owner");
    await api.setMember(org, auditor, "member", ["read:audit_logs", "write:sandboxes"]);
    await api.setMember(org, plain, "member", ["write:sandboxes"]);
    await api.setMember(other, owner, "owner");
    ownerHeaders = await api.jwtHeaders(owner, org);
    auditKey = await createKey(org, auditor, "audit-reader", ["read:audit_logs"]);
    plainKey = await createKey(org, plain, "plain", ["write:sandboxes"]);
    await createKey(other, owner, "elsewhere", []);
    const del = await fetch(`${api.baseUrl}/api/api-keys/plain`, {
      method: "DELETE",
      headers: await api.jwtHeaders(plain, org),
    });
    expect(del.status).toBe(204);
    plainKey = await createKey(org, plain, "plain", ["write:sandboxes"]);
  });
  afterAll(async () => {
    await projector?.stop();
    await api?.close();
    await listener?.close();
  });

  it("lists the organization's events in commit order, with chain hashes and without key hashes", async () => {
    const items = await sealed(7);
    expect(items.map((i) => i.type)).toEqual([
      "MemberAccessChanged",
      "MemberAccessChanged",
      "MemberAccessChanged",
      "KeyCreated",
      "KeyCreated",
      "KeyRevoked",
      "KeyCreated",
    ]);
    for (const item of items) {
      expect(item.data.organizationId).toBe(org);
      expect(item.hash).toMatch(/^[0-9a-f]{64}$/);
      expect(Object.keys(item.data).some((k) => /hash/i.test(k))).toBe(false);
      expect(JSON.stringify(item)).not.toMatch(/dtn_[0-9a-f]{64}/);
    }
    expect(new Set(items.map((i) => i.cursor)).size).toBe(items.length);
    expect(items[3]).toMatchObject({
      type: "KeyCreated",
      actor: { userId: auditor, authMethod: "jwt" },
      stream: { version: 1 },
      data: { name: "audit-reader", userId: auditor, permissions: ["read:audit_logs"] },
    });
    expect(items[3]?.data.maskedValue).toMatch(/^dtn\*+[0-9a-f]{3}$/);
    expect(items.find((i) => i.type === "KeyRevoked")?.stream.version).toBe(2);
    // The other organization's events never appear, even though they are in the same log.
    expect(items.some((i) => JSON.stringify(i).includes(other))).toBe(false);
  });

  it("pages with an opaque cursor", async () => {
    const everything = await sealed(7);
    const seen: AuditItem[] = [];
    let cursor = "";
    for (let n = 0; n < 10; n++) {
      const result = await page(`?limit=3${cursor ? `&after=${cursor}` : ""}`);
      expect(result.items.length).toBeLessThanOrEqual(3);
      seen.push(...result.items);
      cursor = result.nextCursor;
      if (!result.hasMore) break;
    }
    expect(seen).toEqual(everything);
    const end = await page(`?after=${cursor}`);
    expect(end).toEqual({ items: [], nextCursor: cursor, hasMore: false });
    const fromMiddle = await page(`?after=${everything[2]?.cursor}&limit=2`);
    expect(fromMiddle.items).toEqual(everything.slice(3, 5));
    expect(fromMiddle.hasMore).toBe(true);
  });

  it("refuses bad queries with Daytona's error body", async () => {
    for (const query of ["?limit=0", "?limit=1001", "?limit=abc", "?after=nope", "?after=eHgxOjU", "?page=2"]) {
      const res = await get(query, ownerHeaders);
      expect(res.status, query).toBe(400);
      const body = (await res.json()) as { path: string };
      expect(body).toMatchObject({ statusCode: 400, error: "Bad Request" });
      expect(body.path.startsWith("/api/api-key-events")).toBe(true);
    }
  });

  it("lets owners, holders of read:audit_logs (JWT or API key) read, and nobody else", async () => {
    await sealed(7);
    const viaKey = await all({ authorization: `Bearer ${auditKey}` });
    const viaMember = await all(await api.jwtHeaders(auditor, org));
    expect(viaKey.map((i) => i.eventId)).toEqual(viaMember.map((i) => i.eventId));
    expect(viaKey.length).toBeGreaterThanOrEqual(7);

    expect((await get("", await api.jwtHeaders(plain, org))).status).toBe(403);
    expect((await get("", { authorization: `Bearer ${plainKey}` })).status).toBe(403);
    expect((await get("", {})).status).toBe(401);
    expect((await get("", { authorization: "Bearer dtn_nonsense" })).status).toBe(401);
    // An owner of the other organization sees only that one.
    const elsewhere = await all(await api.jwtHeaders(owner, other));
    expect(elsewhere.length).toBeGreaterThan(0);
    expect(elsewhere.every((i) => i.data.organizationId === other)).toBe(true);
  });

  it("streams new events with Accept: text/event-stream, and only this organization's", async () => {
    const before = await sealed(7);
    const controller = new AbortController();
    const res = await fetch(`${api.baseUrl}/api/api-key-events`, {
      headers: {
        ...ownerHeaders,
        accept: "text/event-stream",
        "last-event-id": before[before.length - 1]?.cursor ?? "",
      },
      signal: controller.signal,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const received: AuditItem[] = [];
    const reading = (async () => {
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          buffer += decoder.decode(value, { stream: true });
          for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = block.split("\n").find((line) => line.startsWith("data: "));
            if (data) received.push(JSON.parse(data.slice(6)) as AuditItem);
          }
        }
      } catch {
        // aborted
      }
    })();

    await createKey(other, owner, "not-yours", []);
    await createKey(org, owner, "streamed", ["write:sandboxes"]);
    const arrived = await until("the streamed event", async () =>
      received.find((i) => i.data.name === "streamed") ? received : undefined,
    );
    // (The audit key's use in the previous test may stream as KeyUsed, recorded after its request.)
    expect(arrived.filter((i) => i.type !== "KeyUsed").map((i) => i.type)).toEqual(["KeyCreated"]);
    expect(arrived.every((i) => i.data.organizationId === org)).toBe(true);
    // Give the other organization's event every chance to (wrongly) arrive: a page read after it was sealed.
    const latest = await until("the other organization's event sealed", async () => {
      const theirs = await all(await api.jwtHeaders(owner, other));
      return theirs.find((i) => i.data.name === "not-yours");
    });
    expect(latest).toBeDefined();
    await createKey(org, owner, "streamed-2", []);
    await until("the second streamed event", async () =>
      received.find((i) => i.data.name === "streamed-2") ? true : undefined,
    );
    expect(received.some((i) => i.data.organizationId !== org)).toBe(false);
    const created = received.filter((i) => i.type === "KeyCreated");
    expect(created.map((i) => i.data.name)).toEqual(["streamed", "streamed-2"]);
    controller.abort();
    await reading;
  });
});
