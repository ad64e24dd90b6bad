import { PgNotificationListener, Projector } from "@keyledger/projections";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { INTERNAL_TOKEN, type RunningApi, startApi, uniqueId } from "../support/api-harness";
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

/** Creates a key through the API with the user's JWT; its value. */
async function createKeyThrough(
  api: RunningApi,
  organizationId: string,
  userId: string,
  name: string,
  permissions: string[],
): Promise<string> {
  const res = await fetch(`${api.baseUrl}/api/api-keys`, {
    method: "POST",
    headers: { ...(await api.jwtHeaders(userId, organizationId)), "content-type": "application/json" },
    body: JSON.stringify({ name, permissions }),
  });
  expect(res.status).toBe(201);
  return ((await res.json()) as { value: string }).value;
}

/** Collects the items of an event stream's `data:` lines until it ends (the server ends it, or the fetch aborts). */
function collectEventStream(res: Response): { received: AuditItem[]; ended: Promise<void>; isEnded(): boolean } {
  const received: AuditItem[] = [];
  let isEnded = false;
  const ended = (async () => {
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
    } finally {
      isEnded = true;
    }
  })();
  return { received, ended, isEnded: () => isEnded };
}

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
  const createKey = (organizationId: string, userId: string, name: string, permissions: string[]) =>
    createKeyThrough(api, organizationId, userId, name, permissions);
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
    // Messages in class-validator's style, never a schema's pattern.
    for (const limit of ["0", "1001", "abc", "-1", "2.5", "99999"]) {
      const res = await get(`?limit=${limit}`, ownerHeaders);
      expect(await res.json(), limit).toMatchObject({ message: "limit must be an integer between 1 and 1000" });
    }
    expect(await (await get("?page=2", ownerHeaders)).json()).toMatchObject({
      message: "property page should not exist",
    });
    // The internal membership route's path parameters (ids with a control character) likewise.
    const internal = await fetch(`${api.baseUrl}/internal/organizations/a%01b/members/u`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${INTERNAL_TOKEN}` },
    });
    expect(internal.status).toBe(400);
    expect(await internal.json()).toMatchObject({
      message: "organizationId must be 1 to 255 characters of text without control characters",
    });
    // A stream's bad Last-Event-ID is named as such (it wins over a good `after`), before the stream opens.
    const everything = await sealed(1);
    const res = await get(`?after=${everything[0]?.cursor}`, {
      ...ownerHeaders,
      accept: "text/event-stream",
      "last-event-id": "not-a-cursor",
    });
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    expect(await res.json()).toMatchObject({
      statusCode: 400,
      error: "Bad Request",
      message: "Last-Event-ID must be a cursor returned by this API",
    });
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
    const { received, ended: reading } = collectEventStream(res);

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

describe("GET /api/api-key-events as an event stream: access is checked while it streams", () => {
  let api: RunningApi;
  let listener: PgNotificationListener;
  let projector: Projector;
  const org = uniqueId("stream-org");
  const owner = uniqueId("owner");

  type Stream = { received: AuditItem[]; ended: Promise<void>; isEnded(): boolean; abort(): void };
  /** Opens the event stream and collects its items until the server ends it (or `abort`). */
  const openStream = async (headers: Record<string, string>, query = ""): Promise<Stream> => {
    const controller = new AbortController();
    const res = await fetch(`${api.baseUrl}/api/api-key-events${query}`, {
      headers: { ...headers, accept: "text/event-stream" },
      signal: controller.signal,
    });
    expect(res.status).toBe(200);
    return { ...collectEventStream(res), abort: () => controller.abort() };
  };
  const createKey = (userId: string, name: string, permissions: string[]) =>
    createKeyThrough(api, org, userId, name, permissions);
  const arrives = (stream: Stream, name: string) =>
    until(
      `${name} on the stream`,
      async () => (stream.received.some((i) => i.data.name === name) ? true : undefined),
      30_000,
    );
  /** The stream ends by itself (a stream that keeps going fails the test instead of hanging it). */
  const endsWithin = (stream: Stream, ms: number) =>
    until("the server to end the stream", async () => (stream.isEnded() ? true : undefined), ms);
  /** Waits until `name`'s KeyCreated is sealed (visible to the owner), so a live stream would have had it. */
  const sealedKey = (name: string) =>
    until(`${name} sealed`, async () => {
      const res = await fetch(`${api.baseUrl}/api/api-key-events?limit=1000`, {
        headers: await api.jwtHeaders(owner, org),
      });
      const page = (await res.json()) as Page;
      return page.items.find((i) => i.data.name === name);
    });

  beforeAll(async () => {
    listener = new PgNotificationListener({ connectionString: inject("databaseUrl") });
    api = await startApi({ notifications: listener });
    projector = new Projector({ db: api.db, notifications: listener, pollIntervalMs: 200 });
    projector.start();
    await api.setMember(org, owner, "owner");
  });
  afterAll(async () => {
    await projector?.stop();
    await api?.close();
    await listener?.close();
  });

  it("ends a member's stream when read:audit_logs is taken away, before sending that change", async () => {
    const member = uniqueId("auditor");
    await api.setMember(org, member, "member", ["read:audit_logs"]);
    const stream = await openStream(await api.jwtHeaders(member, org));
    await createKey(owner, "seen-by-member", []);
    await arrives(stream, "seen-by-member");
    await api.setMember(org, member, "member", ["write:sandboxes"]);
    await endsWithin(stream, 20_000);
    await createKey(owner, "after-member-narrowed", []);
    await sealedKey("after-member-narrowed");
    const narrowing = stream.received.filter(
      (i) => i.data.userId === member && !(i.data.permissions as string[]).includes("read:audit_logs"),
    );
    expect(narrowing).toEqual([]);
    expect(stream.received.some((i) => i.data.name === "after-member-narrowed")).toBe(false);
    stream.abort();
  });

  it("ends an API key's stream when the key is revoked, before sending the revocation", async () => {
    const holder = uniqueId("key-holder");
    await api.setMember(org, holder, "member", ["read:audit_logs"]);
    const key = await createKey(holder, "audit-stream-key", ["read:audit_logs"]);
    const stream = await openStream({ authorization: `Bearer ${key}` });
    await createKey(owner, "seen-by-key", []);
    await arrives(stream, "seen-by-key");
    const del = await fetch(`${api.baseUrl}/api/api-keys/audit-stream-key`, {
      method: "DELETE",
      headers: await api.jwtHeaders(holder, org),
    });
    expect(del.status).toBe(204);
    await endsWithin(stream, 20_000);
    await createKey(owner, "after-key-revoked", []);
    await sealedKey("after-key-revoked");
    expect(stream.received.some((i) => i.type === "KeyRevoked")).toBe(false);
    expect(stream.received.some((i) => i.data.name === "after-key-revoked")).toBe(false);
    // An idle stream notices too: the same key, used again, is refused outright.
    expect(
      (await fetch(`${api.baseUrl}/api/api-key-events`, { headers: { authorization: `Bearer ${key}` } })).status,
    ).toBe(401);
    stream.abort();
  });

  it("ends a JWT's stream at the token's exp, even while idle", async () => {
    const exp = Math.floor(Date.now() / 1000) + 3;
    const token = await api.issuer.token({ sub: owner }, { expiresIn: exp });
    const stream = await openStream({ authorization: `Bearer ${token}`, "x-daytona-organization-id": org });
    await createKey(owner, "before-exp", []);
    await arrives(stream, "before-exp");
    await endsWithin(stream, 20_000);
    expect(Date.now()).toBeGreaterThanOrEqual(exp * 1000);
    await createKey(owner, "after-exp", []);
    await sealedKey("after-exp");
    expect(stream.received.some((i) => i.data.name === "after-exp")).toBe(false);
    stream.abort();
  });

  it("resumes from Last-Event-ID rather than the URL's after (an EventSource reconnecting)", async () => {
    await createKey(owner, "resume-1", []);
    await createKey(owner, "resume-2", []);
    const first = await sealedKey("resume-1");
    const second = await sealedKey("resume-2");
    const headers = { ...(await api.jwtHeaders(owner, org)), "last-event-id": second.cursor };
    const stream = await openStream(headers, `?after=${encodeURIComponent(first.cursor)}`);
    await createKey(owner, "resume-3", []);
    await arrives(stream, "resume-3");
    expect(stream.received.map((i) => i.cursor)).not.toContain(second.cursor);
    expect(BigInt(stream.received[0]?.position ?? "0")).toBeGreaterThan(BigInt(second.position));
    stream.abort();
    // Without Last-Event-ID, `after` still decides where the stream starts.
    const fromAfter = await openStream(await api.jwtHeaders(owner, org), `?after=${encodeURIComponent(first.cursor)}`);
    await arrives(fromAfter, "resume-2");
    expect(fromAfter.received[0]?.cursor).toBe(second.cursor);
    fromAfter.abort();
  });
});
