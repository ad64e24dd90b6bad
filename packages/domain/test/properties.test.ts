import { createHash } from "node:crypto";
import * as zlib from "node:zlib";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type ApiKeyCommand,
  type ApiKeyState,
  DomainError,
  decideApiKey,
  decideMember,
  evolveApiKey,
  evolveMember,
  hashKeyValue,
  initialApiKeyState,
  initialMemberState,
  isKeyUsable,
  isWellFormedKey,
  KEY_RANDOM_BYTES,
  type KeyEvent,
  keyValueFromRandomBytes,
  type MemberCommand,
  type MemberRole,
  type MemberState,
  maskKeyValue,
  PERMISSIONS,
  type Permission,
  revocationReasonAfterAccessChange,
} from "../src/index";

// Reproducible: a failure prints its seed and path; the default seed keeps CI deterministic.
const runs = (numRuns: number) => ({ numRuns, seed: Number(process.env.FC_SEED ?? 20_260_801) });

/** zlib's CRC-32 as the independent oracle for the checksum (node ≥ 20.15). */
const zlibCrc32 = (zlib as unknown as { crc32: (data: string) => number }).crc32;
const hex = (length: number) =>
  fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: length, maxLength: length });
const keyBytes = fc.uint8Array({ minLength: KEY_RANDOM_BYTES, maxLength: KEY_RANDOM_BYTES });
const permissionList = fc.array(fc.constantFrom(...PERMISSIONS), { maxLength: 20 });

describe("key format (properties)", () => {
  it("every key built from 28 bytes has the documented shape, embeds the bytes, and passes its checksum", () => {
    fc.assert(
      fc.property(keyBytes, (bytes) => {
        const value = keyValueFromRandomBytes(bytes);
        expect(value).toMatch(/^dtn_[0-9a-f]{64}$/);
        expect(value.slice(4, 60)).toBe(Buffer.from(bytes).toString("hex"));
        expect(value.slice(60)).toBe(zlibCrc32(value.slice(0, 60)).toString(16).padStart(8, "0"));
        expect(isWellFormedKey(value)).toBe(true);
      }),
      runs(2000),
    );
  });

  it("a 56-hex body with any 8-hex suffix is well formed exactly when the suffix is its CRC-32", () => {
    fc.assert(
      fc.property(hex(56), hex(8), fc.boolean(), (body, suffix, useChecksum) => {
        const checksum = zlibCrc32(`dtn_${body}`).toString(16).padStart(8, "0");
        const value = `dtn_${body}${useChecksum ? checksum : suffix}`;
        expect(isWellFormedKey(value)).toBe(useChecksum || suffix === checksum);
      }),
      runs(3000),
    );
  });

  it("any single-character typo or swap of two different neighbours is rejected offline", () => {
    fc.assert(
      fc.property(
        keyBytes,
        fc.integer({ min: 0, max: 67 }),
        fc.constantFrom(..."0123456789abcdefABCDEF_-gz "),
        fc.boolean(),
        (bytes, index, replacement, swap) => {
          const value = keyValueFromRandomBytes(bytes);
          let typo: string;
          if (swap && index < 67) {
            fc.pre(value[index] !== value[index + 1]);
            typo = value.slice(0, index) + value[index + 1] + value[index] + value.slice(index + 2);
          } else {
            fc.pre(value[index] !== replacement);
            typo = value.slice(0, index) + replacement + value.slice(index + 1);
          }
          expect(isWellFormedKey(typo)).toBe(false);
        },
      ),
      runs(3000),
    );
  });

  it("anything that is not a key string is rejected, without throwing", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.anything(),
          fc.string({ unit: "binary" }),
          hex(64).map((h) => `dtn_${h}`),
        ),
        (input) => {
          const accepted = isWellFormedKey(input);
          if (accepted) {
            expect(typeof input).toBe("string");
            const text = input as string;
            expect(text.slice(60)).toBe(zlibCrc32(text.slice(0, 60)).toString(16).padStart(8, "0"));
          }
        },
      ),
      runs(3000),
    );
  });

  it("a value of the wrong length never passes, even with a correct checksum", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 120 }).filter((n) => n !== 56),
        fc.nat(),
        (length, seed) => {
          const body = `dtn_${createHash("sha512").update(String(seed)).digest("hex").repeat(2).slice(0, length)}`;
          expect(isWellFormedKey(body + zlibCrc32(body).toString(16).padStart(8, "0"))).toBe(false);
        },
      ),
      runs(500),
    );
  });

  it("the mask shows the 3-character prefix and the last 3 characters only", () => {
    fc.assert(
      fc.property(keyBytes, keyBytes, (a, b) => {
        const value = keyValueFromRandomBytes(a);
        const masked = maskKeyValue(value);
        expect(masked).toBe(`dtn${"*".repeat(20)}${value.slice(-3)}`);
        // Nothing else of the value leaks: two keys with the same last 3 characters mask identically.
        const other = keyValueFromRandomBytes(b);
        expect(maskKeyValue(other) === masked).toBe(other.slice(-3) === value.slice(-3));
        expect(isWellFormedKey(masked)).toBe(false);
      }),
      runs(2000),
    );
  });

  it("the stored hash is SHA-256 hex, deterministic, and differs between keys", () => {
    fc.assert(
      fc.property(keyBytes, keyBytes, (a, b) => {
        const [va, vb] = [keyValueFromRandomBytes(a), keyValueFromRandomBytes(b)];
        expect(hashKeyValue(va)).toMatch(/^[0-9a-f]{64}$/);
        expect(hashKeyValue(va)).toBe(createHash("sha256").update(va).digest("hex"));
        expect(hashKeyValue(va) === hashKeyValue(vb)).toBe(va === vb);
        expect(hashKeyValue(va)).not.toContain(va.slice(4, 12));
      }),
      runs(1000),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------
// decide/evolve: random command sequences on one key stream (one name of one user), each command decided against
// the state folded from the events so far, as the write side does.

type Step =
  | {
      kind: "create";
      permissions: Permission[];
      grantor: { role: MemberRole; permissions: Permission[] };
      expiresIn: number | null;
    }
  | { kind: "revoke" }
  | { kind: "rotate"; grace: number; expiresIn: number | null | undefined; mayExtendExpiry: boolean }
  | { kind: "use"; throttleMs: number };

const grantorArb = fc.record({ role: fc.constantFrom<MemberRole>("owner", "member"), permissions: permissionList });
const stepArb: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant("create" as const),
    permissions: permissionList,
    grantor: grantorArb,
    expiresIn: fc.option(fc.integer({ min: -10_000, max: 10_000_000 })),
  }),
  fc.constant({ kind: "revoke" as const }),
  fc.record({
    kind: fc.constant("rotate" as const),
    grace: fc.oneof(fc.integer({ min: -5, max: 700_000 }), fc.constant(0.5)),
    expiresIn: fc
      .option(fc.integer({ min: -10_000, max: 10_000_000 }), { nil: undefined })
      .chain((v) => (v === undefined ? fc.constantFrom<number | null | undefined>(undefined, null) : fc.constant(v))),
    mayExtendExpiry: fc.boolean(),
  }),
  fc.record({ kind: fc.constant("use" as const), throttleMs: fc.integer({ min: 0, max: 100_000 }) }),
);
const historyArb = fc.array(fc.tuple(stepArb, fc.integer({ min: 0, max: 5_000_000 })), { maxLength: 40 });

const T0 = Date.parse("2030-01-01T00:00:00.000Z");

function commandFor(step: Step, now: Date, index: number): ApiKeyCommand {
  const at = (ms: number) => new Date(now.getTime() + ms);
  switch (step.kind) {
    case "create":
      return {
        type: "CreateKey",
        data: {
          keyId: `key-${index}`,
          organizationId: "org-1",
          userId: "user-1",
          name: "ci",
          keyHash: hashKeyValue(`create-${index}`),
          maskedValue: "dtn********************000",
          permissions: step.permissions,
          expiresAt: step.expiresIn === null ? null : at(step.expiresIn),
          grantor: step.grantor,
          now,
        },
      };
    case "revoke":
      return { type: "RevokeKey", data: { reason: "deleted", now } };
    case "rotate":
      return {
        type: "RotateKey",
        data: {
          keyHash: hashKeyValue(`rotate-${index}`),
          maskedValue: "dtn********************111",
          gracePeriodSeconds: step.grace,
          expiresAt: step.expiresIn === undefined || step.expiresIn === null ? step.expiresIn : at(step.expiresIn),
          mayExtendExpiry: step.mayExtendExpiry,
          expectedKeyHash: undefined,
          now,
        },
      };
    case "use":
      return { type: "RecordKeyUse", data: { usedAt: now, throttleMs: step.throttleMs } };
  }
}

type Decided = { command: ApiKeyCommand; before: ApiKeyState; events: KeyEvent[]; after: ApiKeyState; now: Date };

/** Runs a history; a refused command (DomainError) decides no events. Anything else thrown fails the property. */
function run(history: [Step, number][]): Decided[] {
  let state = initialApiKeyState;
  let clock = T0;
  return history.map(([step, advance], index) => {
    clock += advance;
    const now = new Date(clock);
    const command = commandFor(step, now, index);
    let events: KeyEvent[] = [];
    try {
      events = decideApiKey(command, state);
    } catch (error) {
      if (!(error instanceof DomainError)) throw error;
    }
    const before = state;
    state = events.reduce(evolveApiKey, state);
    return { command, before, events, after: state, now };
  });
}

describe("decide/evolve (properties)", () => {
  it("a revoked key never becomes usable again; only a new create (a new key id) makes the name active", () => {
    fc.assert(
      fc.property(historyArb, (history) => {
        const revoked = new Set<string>();
        for (const step of run(history)) {
          for (const event of step.events) if (event.type === "KeyRevoked") revoked.add(event.data.keyId);
          if (step.after.status === "active") {
            expect(revoked.has(step.after.keyId)).toBe(false);
            if (step.before.status !== "active") {
              expect(step.events.map((e) => e.type)).toEqual(["KeyCreated"]);
              expect(step.after.keyId).not.toBe(step.before.status === "absent" ? undefined : step.before.keyId);
            }
          }
          if (step.after.status !== "active") expect(isKeyUsable(step.after, step.now)).toBe(false);
          if (step.before.status === "revoked" && step.command.type !== "CreateKey") {
            expect(step.after).toEqual(step.before);
          }
        }
      }),
      runs(1000),
    );
  });

  it("a key's permissions never exceed its creator's, hold no duplicates, and never change until it is revoked", () => {
    fc.assert(
      fc.property(historyArb, (history) => {
        let granted: Permission[] | null = null;
        for (const step of run(history)) {
          for (const event of step.events) {
            if (event.type !== "KeyCreated" || step.command.type !== "CreateKey") continue;
            const { grantor, permissions: requested } = step.command.data;
            const created = event.data.permissions;
            expect(new Set(created).size).toBe(created.length);
            expect(new Set(created)).toEqual(new Set(requested));
            if (grantor.role === "member") for (const p of created) expect(grantor.permissions).toContain(p);
            granted = created;
          }
          if (step.after.status === "active") expect(step.after.permissions).toEqual(granted);
        }
      }),
      runs(1000),
    );
  });

  it("refusals write nothing, and the command's preconditions decide exactly when it is refused", () => {
    fc.assert(
      fc.property(historyArb, (history) => {
        for (const { command, before, events, after, now } of run(history)) {
          if (events.length === 0) expect(after).toBe(before);
          switch (command.type) {
            case "RevokeKey":
              expect(events.length).toBe(before.status === "active" ? 1 : 0);
              break;
            case "CreateKey": {
              const { grantor, permissions, expiresAt } = command.data;
              const grantable = grantor.role === "owner" || permissions.every((p) => grantor.permissions.includes(p));
              const ok = before.status !== "active" && grantable && (expiresAt === null || expiresAt > now);
              expect(events.length).toBe(ok ? 1 : 0);
              break;
            }
            case "RotateKey": {
              const { gracePeriodSeconds: g, expiresAt, mayExtendExpiry } = command.data;
              const extendsExpiry =
                before.status !== "absent" &&
                before.expiresAt !== null &&
                expiresAt !== undefined &&
                (expiresAt === null || expiresAt.getTime() > Date.parse(before.expiresAt));
              const ok =
                isKeyUsable(before, now) &&
                Number.isInteger(g) &&
                g >= 0 &&
                g <= 604_800 &&
                (expiresAt == null || expiresAt > now) &&
                (mayExtendExpiry || !extendsExpiry);
              expect(events.length).toBe(ok ? 1 : 0);
              if (ok && before.status === "active" && after.status === "active") {
                expect(after.keyId).toBe(before.keyId);
                expect(after.previousKeyHash).toBe(before.keyHash);
                // The old value's grace never outlives the key's own expiry.
                if (before.expiresAt !== null && after.previousValidUntil !== null) {
                  expect(Date.parse(after.previousValidUntil)).toBeLessThanOrEqual(Date.parse(before.expiresAt));
                }
                // Nor the expiry the rotation sets.
                if (after.expiresAt !== null && after.previousValidUntil !== null) {
                  expect(Date.parse(after.previousValidUntil)).toBeLessThanOrEqual(Date.parse(after.expiresAt));
                }
              }
              break;
            }
            case "RecordKeyUse":
              if (!isKeyUsable(before, now)) expect(events).toEqual([]);
              if (after.status !== "absent") {
                // Use only moves lastUsedAt forward; it changes nothing that decides access.
                expect({ ...after, lastUsedAt: null }).toEqual({ ...before, lastUsedAt: null });
              }
              break;
          }
        }
      }),
      runs(1000),
    );
  });

  it("replaying the recorded events rebuilds the same state (evolve is a pure fold)", () => {
    fc.assert(
      fc.property(historyArb, (history) => {
        const steps = run(history);
        const all = steps.flatMap((s) => s.events);
        const final = steps.at(-1)?.after ?? initialApiKeyState;
        expect(all.reduce(evolveApiKey, initialApiKeyState)).toEqual(final);
        expect(JSON.parse(JSON.stringify(all)).reduce(evolveApiKey, initialApiKeyState)).toEqual(final);
      }),
      runs(500),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Across the member and key aggregates: the write side creates keys within the member's access and, after every
// access change, revokes the keys the domain says no longer fit. Whatever happens, no live key holds more than its
// member currently has.

type MemberStep =
  | { kind: "access"; role: MemberRole; permissions: Permission[] }
  | { kind: "remove" }
  | { kind: "create"; permissions: Permission[] };

const memberStepArb: fc.Arbitrary<MemberStep> = fc.oneof(
  fc.record({
    kind: fc.constant("access" as const),
    role: fc.constantFrom<MemberRole>("owner", "member"),
    permissions: permissionList,
  }),
  fc.constant({ kind: "remove" as const }),
  fc.record({ kind: fc.constant("create" as const), permissions: permissionList }),
);

describe("member access vs keys (properties)", () => {
  it("no live key ever holds a permission its member lacks, and a removed member has no live key", () => {
    fc.assert(
      fc.property(fc.array(memberStepArb, { maxLength: 40 }), (steps) => {
        const now = new Date(T0);
        let member: MemberState = initialMemberState;
        const keys = new Map<string, ApiKeyState>();
        steps.forEach((step, index) => {
          if (step.kind === "create") {
            if (member.status === "absent") return; // not a member: 403 before any decision
            const name = `key-${index}`;
            try {
              const events = decideApiKey(
                {
                  type: "CreateKey",
                  data: {
                    keyId: name,
                    organizationId: "org-1",
                    userId: "user-1",
                    name,
                    keyHash: hashKeyValue(name),
                    maskedValue: "dtn********************000",
                    permissions: step.permissions,
                    expiresAt: null,
                    grantor: { role: member.role, permissions: member.permissions },
                    now,
                  },
                },
                initialApiKeyState,
              );
              keys.set(name, events.reduce(evolveApiKey, initialApiKeyState));
            } catch (error) {
              if (!(error instanceof DomainError)) throw error;
            }
          } else {
            const command: MemberCommand =
              step.kind === "remove"
                ? { type: "RemoveMember", data: { organizationId: "org-1", userId: "user-1", now } }
                : {
                    type: "ChangeMemberAccess",
                    data: {
                      organizationId: "org-1",
                      userId: "user-1",
                      role: step.role,
                      permissions: step.permissions,
                      now,
                    },
                  };
            member = decideMember(command, member).reduce(evolveMember, member);
            for (const [name, key] of keys) {
              if (key.status !== "active") continue;
              const reason = revocationReasonAfterAccessChange(member, key.permissions);
              if (reason === null) continue;
              const revoked = decideApiKey({ type: "RevokeKey", data: { reason, now } }, key);
              keys.set(name, revoked.reduce(evolveApiKey, key));
            }
          }
          for (const key of keys.values()) {
            if (key.status !== "active") continue;
            expect(member.status).toBe("member");
            if (member.status === "member" && member.role === "member") {
              for (const p of key.permissions) expect(member.permissions).toContain(p);
            }
          }
        });
      }),
      runs(1000),
    );
  });
});
