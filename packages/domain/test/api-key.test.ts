import { describe, expect, it } from "vitest";
import {
  type ApiKeyCommand,
  type ApiKeyState,
  type CreateKey,
  DomainError,
  decideApiKey,
  evolveApiKey,
  initialApiKeyState,
  isKeyUsable,
  type KeyCreated,
  type KeyEvent,
  type KeyRevoked,
  type KeyUsed,
  PERMISSIONS,
  type Permission,
} from "../src/index";

const T0 = new Date("2030-01-01T00:00:00.000Z");
const at = (ms: number) => new Date(T0.getTime() + ms);

function createKey(overrides: Partial<CreateKey["data"]> = {}): CreateKey {
  return {
    type: "CreateKey",
    data: {
      keyId: "key-1",
      organizationId: "org-1",
      userId: "user-1",
      name: "ci",
      keyHash: "a".repeat(64),
      maskedValue: `dtn${"*".repeat(20)}abc`,
      permissions: ["write:sandboxes"],
      expiresAt: null,
      grantor: { role: "owner", permissions: [] },
      now: T0,
      ...overrides,
    },
  };
}

function keyCreated(overrides: Partial<KeyCreated["data"]> = {}): KeyCreated {
  return {
    type: "KeyCreated",
    data: {
      keyId: "key-1",
      organizationId: "org-1",
      userId: "user-1",
      name: "ci",
      keyHash: "a".repeat(64),
      maskedValue: `dtn${"*".repeat(20)}abc`,
      permissions: ["write:sandboxes"],
      createdAt: T0.toISOString(),
      expiresAt: null,
      ...overrides,
    },
  };
}

function keyRevoked(keyId = "key-1"): KeyRevoked {
  return {
    type: "KeyRevoked",
    data: {
      keyId,
      organizationId: "org-1",
      userId: "user-1",
      name: "ci",
      keyHash: "a".repeat(64),
      reason: "deleted",
      revokedAt: at(1000).toISOString(),
    } as KeyRevoked["data"],
  };
}

function keyUsed(usedAt: Date, keyId = "key-1"): KeyUsed {
  return {
    type: "KeyUsed",
    data: { keyId, organizationId: "org-1", userId: "user-1", name: "ci", usedAt: usedAt.toISOString() },
  };
}

const fold = (events: KeyEvent[]): ApiKeyState => events.reduce(evolveApiKey, initialApiKeyState);

/** Given past events, when a command is decided, then these events (or this error). */
function given(events: KeyEvent[]) {
  return {
    when(command: ApiKeyCommand) {
      const run = () => decideApiKey(command, fold(events));
      return {
        thenEvents: (expected: Partial<KeyEvent>[]) => {
          const decided = run();
          expect(decided).toHaveLength(expected.length);
          for (const [i, e] of expected.entries()) expect(decided[i]).toMatchObject(e);
          return decided;
        },
        thenFails(code: DomainError["code"], message?: string) {
          let thrown: unknown;
          try {
            run();
          } catch (error) {
            thrown = error;
          }
          expect(thrown).toBeInstanceOf(DomainError);
          expect((thrown as DomainError).code).toBe(code);
          if (message !== undefined) expect((thrown as DomainError).message).toBe(message);
          return thrown as DomainError;
        },
      };
    },
  };
}

describe("decideApiKey: CreateKey", () => {
  it("given no history, creates the key with every field of the command and no secret", () => {
    const [event] = given([])
      .when(createKey({ expiresAt: at(60_000) }))
      .thenEvents([
        {
          type: "KeyCreated",
          data: {
            keyId: "key-1",
            organizationId: "org-1",
            userId: "user-1",
            name: "ci",
            keyHash: "a".repeat(64),
            maskedValue: `dtn${"*".repeat(20)}abc`,
            permissions: ["write:sandboxes"],
            createdAt: T0.toISOString(),
            expiresAt: at(60_000).toISOString(),
          },
        },
      ]);
    expect(Object.keys((event as KeyCreated).data)).not.toContain("value");
  });

  it("given no history, a key without expiry has expiresAt null", () => {
    given([])
      .when(createKey())
      .thenEvents([{ type: "KeyCreated", data: { expiresAt: null } as KeyCreated["data"] }]);
  });

  it("removes duplicate permissions", () => {
    const [event] = given([])
      .when(createKey({ permissions: ["read:volumes", "write:sandboxes", "read:volumes"] }))
      .thenEvents([{ type: "KeyCreated" }]);
    expect((event as KeyCreated).data.permissions).toEqual(["read:volumes", "write:sandboxes"]);
  });

  it("accepts an empty permission list", () => {
    given([])
      .when(createKey({ permissions: [] }))
      .thenEvents([{ type: "KeyCreated", data: { permissions: [] } as unknown as KeyCreated["data"] }]);
  });

  it("given a live key of that name, refuses with KEY_NAME_TAKEN", () => {
    given([keyCreated()])
      .when(createKey({ keyId: "key-2" }))
      .thenFails("KEY_NAME_TAKEN", "API key with this name already exists");
  });

  it("given a live key that was used, still refuses the name", () => {
    given([keyCreated(), keyUsed(at(5))])
      .when(createKey({ keyId: "key-2" }))
      .thenFails("KEY_NAME_TAKEN");
  });

  it("given a revoked key of that name, creates a new key in the same stream", () => {
    given([keyCreated(), keyRevoked()])
      .when(createKey({ keyId: "key-2", keyHash: "b".repeat(64), now: at(2000) }))
      .thenEvents([{ type: "KeyCreated", data: { keyId: "key-2", keyHash: "b".repeat(64) } as KeyCreated["data"] }]);
  });

  it("given an expired but not revoked key of that name, still refuses (Daytona keeps the name)", () => {
    given([keyCreated({ expiresAt: at(10).toISOString() })])
      .when(createKey({ keyId: "key-2", now: at(1000) }))
      .thenFails("KEY_NAME_TAKEN");
  });

  it("refuses an expiry in the past or exactly now with EXPIRY_IN_PAST", () => {
    given([])
      .when(createKey({ expiresAt: at(-1) }))
      .thenFails("EXPIRY_IN_PAST");
    given([])
      .when(createKey({ expiresAt: T0 }))
      .thenFails("EXPIRY_IN_PAST");
  });

  it("lets an owner grant every permission", () => {
    given([])
      .when(createKey({ permissions: [...PERMISSIONS], grantor: { role: "owner", permissions: [] } }))
      .thenEvents([{ type: "KeyCreated" }]);
  });

  it("lets a member grant what their roles hold", () => {
    given([])
      .when(
        createKey({
          permissions: ["write:sandboxes", "read:volumes"],
          grantor: { role: "member", permissions: ["read:volumes", "write:sandboxes", "delete:sandboxes"] },
        }),
      )
      .thenEvents([{ type: "KeyCreated" }]);
  });

  it("refuses a member granting permissions they lack, naming each one once in request order", () => {
    const error = given([])
      .when(
        createKey({
          permissions: ["delete:sandboxes", "write:sandboxes", "read:audit_logs", "delete:sandboxes"],
          grantor: { role: "member", permissions: ["write:sandboxes"] },
        }),
      )
      .thenFails(
        "PERMISSIONS_NOT_GRANTABLE",
        "Insufficient permissions for assigning: delete:sandboxes, read:audit_logs",
      );
    expect(error.permissions).toEqual(["delete:sandboxes", "read:audit_logs"]);
  });

  it("checks grantability before the name (a refused grant never reveals the name is taken)", () => {
    given([keyCreated()])
      .when(createKey({ permissions: ["delete:runners"], grantor: { role: "member", permissions: [] } }))
      .thenFails("PERMISSIONS_NOT_GRANTABLE");
  });
});

describe("decideApiKey: RevokeKey", () => {
  const revoke = (reason: "deleted" | "permissions_unassigned" | "member_removed" = "deleted"): ApiKeyCommand => ({
    type: "RevokeKey",
    data: { reason, now: at(1000) },
  });

  it("given a live key, revokes it with the reason and the key's identity and hash", () => {
    for (const reason of ["deleted", "permissions_unassigned", "member_removed"] as const) {
      given([keyCreated()])
        .when(revoke(reason))
        .thenEvents([
          {
            type: "KeyRevoked",
            data: {
              keyId: "key-1",
              organizationId: "org-1",
              userId: "user-1",
              name: "ci",
              keyHash: "a".repeat(64),
              reason,
              revokedAt: at(1000).toISOString(),
            } as KeyRevoked["data"],
          },
        ]);
    }
  });

  it("given no key, refuses with KEY_NOT_FOUND", () => {
    given([]).when(revoke()).thenFails("KEY_NOT_FOUND", "API key not found");
  });

  it("given a revoked key, refuses with KEY_NOT_FOUND", () => {
    given([keyCreated(), keyRevoked()]).when(revoke()).thenFails("KEY_NOT_FOUND");
  });

  it("given a re-created key, revokes the new one", () => {
    given([keyCreated(), keyRevoked(), keyCreated({ keyId: "key-2" })])
      .when(revoke())
      .thenEvents([{ type: "KeyRevoked", data: { keyId: "key-2" } as KeyRevoked["data"] }]);
  });
});

describe("decideApiKey: RotateKey refusals", () => {
  const rotate = (now: Date): ApiKeyCommand => ({
    type: "RotateKey",
    data: {
      keyHash: "b".repeat(64),
      maskedValue: `dtn${"*".repeat(20)}xyz`,
      gracePeriodSeconds: 0,
      expiresAt: undefined,
      mayExtendExpiry: true,
      expectedKeyHash: undefined,
      now,
    },
  });

  it("given no key or a revoked key, refuses with KEY_NOT_FOUND", () => {
    given([])
      .when(rotate(at(1000)))
      .thenFails("KEY_NOT_FOUND", "API key not found");
    given([keyCreated(), keyRevoked()])
      .when(rotate(at(1000)))
      .thenFails("KEY_NOT_FOUND");
  });

  it("given a key that has expired (still listed), refuses with KEY_EXPIRED", () => {
    given([keyCreated({ expiresAt: at(500).toISOString() })])
      .when(rotate(at(500)))
      .thenFails("KEY_EXPIRED", "API key has expired: create a new key instead");
  });
});

describe("decideApiKey: RotateKey expiry", () => {
  const rotate = (overrides: Partial<Extract<ApiKeyCommand, { type: "RotateKey" }>["data"]> = {}): ApiKeyCommand => ({
    type: "RotateKey",
    data: {
      keyHash: "b".repeat(64),
      maskedValue: `dtn${"*".repeat(20)}xyz`,
      gracePeriodSeconds: 60,
      expiresAt: undefined,
      mayExtendExpiry: true,
      expectedKeyHash: undefined,
      now: at(1000),
      ...overrides,
    },
  });
  const expiring = keyCreated({ expiresAt: at(3_600_000).toISOString() });

  it("given a key with an expiry, a JWT's rotation may move it later or remove it", () => {
    given([expiring])
      .when(rotate({ expiresAt: null }))
      .thenEvents([{ type: "KeyRotated", data: expect.objectContaining({ expiresAt: null }) }]);
    given([expiring])
      .when(rotate({ expiresAt: at(7_200_000) }))
      .thenEvents([{ type: "KeyRotated", data: expect.objectContaining({ expiresAt: at(7_200_000).toISOString() }) }]);
  });

  it("ends the previous value's grace at the key's expiry: the one it had, or an earlier one the rotation sets", () => {
    given([keyCreated({ expiresAt: at(30_000).toISOString() })])
      .when(rotate({ gracePeriodSeconds: 600 }))
      .thenEvents([
        { type: "KeyRotated", data: expect.objectContaining({ previousValidUntil: at(30_000).toISOString() }) },
      ]);
    given([keyCreated()])
      .when(rotate({ gracePeriodSeconds: 600, expiresAt: at(5_000) }))
      .thenEvents([
        {
          type: "KeyRotated",
          data: expect.objectContaining({
            previousValidUntil: at(5_000).toISOString(),
            expiresAt: at(5_000).toISOString(),
          }),
        },
      ]);
    given([keyCreated()])
      .when(rotate({ gracePeriodSeconds: 600, expiresAt: at(3_600_000) }))
      .thenEvents([
        { type: "KeyRotated", data: expect.objectContaining({ previousValidUntil: at(601_000).toISOString() }) },
      ]);
  });

  it("given a key with an expiry, the key rotating itself cannot move it later nor remove it", () => {
    const message = "An API key cannot extend its own expiry: rotate it with a JWT to change its expiry to a later one";
    given([expiring])
      .when(rotate({ mayExtendExpiry: false, expiresAt: null }))
      .thenFails("EXPIRY_EXTENSION_NOT_ALLOWED", message);
    given([expiring])
      .when(rotate({ mayExtendExpiry: false, expiresAt: at(3_600_001) }))
      .thenFails("EXPIRY_EXTENSION_NOT_ALLOWED", message);
  });

  it("the key rotating itself may keep its expiry, shorten it, or set one when it had none", () => {
    given([expiring])
      .when(rotate({ mayExtendExpiry: false }))
      .thenEvents([{ type: "KeyRotated", data: expect.objectContaining({ expiresAt: at(3_600_000).toISOString() }) }]);
    given([expiring])
      .when(rotate({ mayExtendExpiry: false, expiresAt: at(3_600_000) }))
      .thenEvents([{ type: "KeyRotated", data: expect.objectContaining({ expiresAt: at(3_600_000).toISOString() }) }]);
    given([expiring])
      .when(rotate({ mayExtendExpiry: false, expiresAt: at(60_000) }))
      .thenEvents([{ type: "KeyRotated", data: expect.objectContaining({ expiresAt: at(60_000).toISOString() }) }]);
    given([keyCreated()])
      .when(rotate({ mayExtendExpiry: false, expiresAt: null }))
      .thenEvents([{ type: "KeyRotated", data: expect.objectContaining({ expiresAt: null }) }]);
    given([keyCreated()])
      .when(rotate({ mayExtendExpiry: false, expiresAt: at(60_000) }))
      .thenEvents([{ type: "KeyRotated", data: expect.objectContaining({ expiresAt: at(60_000).toISOString() }) }]);
  });
});

describe("decideApiKey: RecordKeyUse", () => {
  const use = (usedAt: Date, throttleMs = 10_000): ApiKeyCommand => ({
    type: "RecordKeyUse",
    data: { usedAt, throttleMs },
  });

  it("given a never-used key, records the use", () => {
    given([keyCreated()])
      .when(use(at(100)))
      .thenEvents([
        {
          type: "KeyUsed",
          data: {
            keyId: "key-1",
            organizationId: "org-1",
            userId: "user-1",
            name: "ci",
            usedAt: at(100).toISOString(),
          },
        },
      ]);
  });

  it("given a use within the throttle window, records nothing", () => {
    given([keyCreated(), keyUsed(at(100))])
      .when(use(at(100 + 9_999)))
      .thenEvents([]);
  });

  it("given a use exactly one throttle window ago, records again", () => {
    given([keyCreated(), keyUsed(at(100))])
      .when(use(at(100 + 10_000)))
      .thenEvents([{ type: "KeyUsed" }]);
  });

  it("with a zero throttle, records every use", () => {
    given([keyCreated(), keyUsed(at(100))])
      .when(use(at(100), 0))
      .thenEvents([{ type: "KeyUsed" }]);
  });

  it("given no key, a revoked key or an expired key, records nothing (and does not throw)", () => {
    given([])
      .when(use(at(100)))
      .thenEvents([]);
    given([keyCreated(), keyRevoked()])
      .when(use(at(2000)))
      .thenEvents([]);
    given([keyCreated({ expiresAt: at(50).toISOString() })])
      .when(use(at(50)))
      .thenEvents([]);
  });
  it("given the name now holds another key, records nothing for a use of the one it held before", () => {
    const useOf = (keyId: string): ApiKeyCommand => ({
      type: "RecordKeyUse",
      data: { usedAt: at(3000), throttleMs: 10_000, keyId },
    });
    const recreated = [keyCreated(), keyRevoked(), keyCreated({ keyId: "key-2" })];
    given(recreated).when(useOf("key-1")).thenEvents([]);
    const [used] = given(recreated)
      .when(useOf("key-2"))
      .thenEvents([{ type: "KeyUsed" }]);
    expect(used?.data.keyId).toBe("key-2");
  });
});

describe("evolveApiKey", () => {
  it("KeyCreated makes an active key with the event's fields and no last use", () => {
    expect(fold([keyCreated({ expiresAt: at(5).toISOString(), permissions: ["read:runners"] })])).toMatchObject({
      status: "active",
      keyId: "key-1",
      organizationId: "org-1",
      userId: "user-1",
      name: "ci",
      keyHash: "a".repeat(64),
      permissions: ["read:runners"],
      createdAt: T0.toISOString(),
      expiresAt: at(5).toISOString(),
      lastUsedAt: null,
    });
  });

  it("KeyRevoked marks the key revoked and keeps its fields", () => {
    expect(fold([keyCreated(), keyRevoked()])).toMatchObject({ status: "revoked", keyId: "key-1", name: "ci" });
  });

  it("KeyUsed moves lastUsedAt forward only", () => {
    expect(fold([keyCreated(), keyUsed(at(10))])).toMatchObject({ lastUsedAt: at(10).toISOString() });
    expect(fold([keyCreated(), keyUsed(at(10)), keyUsed(at(5))])).toMatchObject({ lastUsedAt: at(10).toISOString() });
    expect(fold([keyCreated(), keyUsed(at(10)), keyUsed(at(20))])).toMatchObject({
      lastUsedAt: at(20).toISOString(),
    });
  });

  it("ignores KeyRevoked and KeyUsed of another key id (an earlier lifetime of the name)", () => {
    const state = fold([keyCreated(), keyRevoked(), keyCreated({ keyId: "key-2" })]);
    expect(evolveApiKey(state, keyRevoked("key-1"))).toEqual(state);
    expect(evolveApiKey(state, keyUsed(at(10), "key-1"))).toEqual(state);
  });

  it("ignores KeyRevoked and KeyUsed on an absent key", () => {
    expect(evolveApiKey(initialApiKeyState, keyRevoked())).toEqual(initialApiKeyState);
    expect(evolveApiKey(initialApiKeyState, keyUsed(at(1)))).toEqual(initialApiKeyState);
  });

  it("a re-created key starts fresh: active, new id, no last use", () => {
    const state = fold([keyCreated(), keyUsed(at(10)), keyRevoked(), keyCreated({ keyId: "key-2" })]);
    expect(state).toMatchObject({ status: "active", keyId: "key-2", lastUsedAt: null });
  });

  it("does not mutate the state it is given", () => {
    const state = fold([keyCreated()]);
    const copy = structuredClone(state);
    evolveApiKey(state, keyUsed(at(10)));
    evolveApiKey(state, keyRevoked());
    expect(state).toEqual(copy);
  });
});

describe("isKeyUsable", () => {
  it("is true for an active key without expiry or before its expiry, false at or after it and when revoked", () => {
    expect(isKeyUsable(fold([keyCreated()]), at(1e9))).toBe(true);
    const expiring = fold([keyCreated({ expiresAt: at(100).toISOString() })]);
    expect(isKeyUsable(expiring, at(99))).toBe(true);
    expect(isKeyUsable(expiring, at(100))).toBe(false);
    expect(isKeyUsable(fold([keyCreated(), keyRevoked()]), at(0))).toBe(false);
    expect(isKeyUsable(initialApiKeyState, at(0))).toBe(false);
  });
});

describe("decide then evolve", () => {
  it("a create/use/revoke/create history folds to what deciding each step produced", () => {
    const history: KeyEvent[] = [];
    const step = (command: ApiKeyCommand) => {
      const events = decideApiKey(command, fold(history));
      history.push(...events);
      return events;
    };
    step(createKey());
    step({ type: "RecordKeyUse", data: { usedAt: at(1), throttleMs: 10 } });
    expect(step({ type: "RecordKeyUse", data: { usedAt: at(5), throttleMs: 10 } })).toEqual([]);
    step({ type: "RevokeKey", data: { reason: "deleted", now: at(20) } });
    step(createKey({ keyId: "key-2", now: at(30), permissions: ["read:volumes" as Permission] }));
    expect(history.map((e) => e.type)).toEqual(["KeyCreated", "KeyUsed", "KeyRevoked", "KeyCreated"]);
    expect(fold(history)).toMatchObject({ status: "active", keyId: "key-2", permissions: ["read:volumes"] });
  });
});
