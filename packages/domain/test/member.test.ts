import { describe, expect, it } from "vitest";
import {
  decideMember,
  evolveMember,
  initialMemberState,
  type MemberAccessChanged,
  type MemberCommand,
  type MemberEvent,
  type MemberRemoved,
  type MemberRole,
  type MemberState,
  type Permission,
  revocationReasonAfterAccessChange,
} from "../src/index";

const NOW = new Date("2030-01-01T00:00:00.000Z");

const change = (role: MemberRole, permissions: Permission[]): MemberCommand => ({
  type: "ChangeMemberAccess",
  data: { organizationId: "org-1", userId: "user-1", role, permissions, now: NOW },
});
const remove: MemberCommand = { type: "RemoveMember", data: { organizationId: "org-1", userId: "user-1", now: NOW } };

const accessChanged = (role: MemberRole, permissions: Permission[]): MemberAccessChanged => ({
  type: "MemberAccessChanged",
  data: { organizationId: "org-1", userId: "user-1", role, permissions, changedAt: NOW.toISOString() },
});
const removed: MemberRemoved = {
  type: "MemberRemoved",
  data: { organizationId: "org-1", userId: "user-1", removedAt: NOW.toISOString() },
};

const fold = (events: MemberEvent[]): MemberState => events.reduce(evolveMember, initialMemberState);
const given = (events: MemberEvent[]) => ({
  when: (command: MemberCommand) => ({
    thenEvents: (expected: MemberEvent[]) => expect(decideMember(command, fold(events))).toEqual(expected),
  }),
});

describe("decideMember: ChangeMemberAccess", () => {
  it("given no membership, records the access with sorted, de-duplicated permissions", () => {
    given([])
      .when(change("member", ["write:sandboxes", "read:volumes", "write:sandboxes"]))
      .thenEvents([accessChanged("member", ["read:volumes", "write:sandboxes"])]);
  });

  it("given the same role and permissions (in any order), decides nothing", () => {
    given([accessChanged("member", ["read:volumes", "write:sandboxes"])])
      .when(change("member", ["write:sandboxes", "read:volumes"]))
      .thenEvents([]);
    given([accessChanged("owner", [])])
      .when(change("owner", []))
      .thenEvents([]);
  });

  it("given a different role or permission set, records the change", () => {
    given([accessChanged("member", ["read:volumes"])])
      .when(change("owner", ["read:volumes"]))
      .thenEvents([accessChanged("owner", ["read:volumes"])]);
    given([accessChanged("member", ["read:volumes", "write:sandboxes"])])
      .when(change("member", ["read:volumes"]))
      .thenEvents([accessChanged("member", ["read:volumes"])]);
    given([accessChanged("member", ["read:volumes"])])
      .when(change("member", ["read:volumes", "read:runners"]))
      .thenEvents([accessChanged("member", ["read:runners", "read:volumes"])]);
  });

  it("given a removed member, records the access again", () => {
    given([accessChanged("member", ["read:volumes"]), removed])
      .when(change("member", ["read:volumes"]))
      .thenEvents([accessChanged("member", ["read:volumes"])]);
  });
});

describe("decideMember: RemoveMember", () => {
  it("given a member, removes them", () => {
    given([accessChanged("owner", [])])
      .when(remove)
      .thenEvents([removed]);
  });

  it("given no membership or an earlier removal, decides nothing", () => {
    given([]).when(remove).thenEvents([]);
    given([accessChanged("member", []), removed])
      .when(remove)
      .thenEvents([]);
  });
});

describe("evolveMember", () => {
  it("MemberAccessChanged sets role and permissions; MemberRemoved makes the member absent", () => {
    expect(fold([accessChanged("member", ["read:volumes"])])).toEqual({
      status: "member",
      role: "member",
      permissions: ["read:volumes"],
    });
    expect(fold([accessChanged("member", ["read:volumes"]), accessChanged("owner", [])])).toEqual({
      status: "member",
      role: "owner",
      permissions: [],
    });
    expect(fold([accessChanged("member", ["read:volumes"]), removed])).toEqual({ status: "absent" });
  });
});

describe("revocationReasonAfterAccessChange", () => {
  const member = (permissions: Permission[]): MemberState => ({ status: "member", role: "member", permissions });
  const owner: MemberState = { status: "member", role: "owner", permissions: [] };

  it("a removed member loses every key, even one without permissions", () => {
    expect(revocationReasonAfterAccessChange({ status: "absent" }, [])).toBe("member_removed");
    expect(revocationReasonAfterAccessChange({ status: "absent" }, ["read:volumes"])).toBe("member_removed");
  });

  it("an owner keeps every key", () => {
    expect(revocationReasonAfterAccessChange(owner, ["delete:runners", "read:audit_logs"])).toBeNull();
  });

  it("a member keeps a key whose permissions they all still hold", () => {
    expect(revocationReasonAfterAccessChange(member(["read:volumes", "write:sandboxes"]), ["read:volumes"])).toBeNull();
    expect(revocationReasonAfterAccessChange(member([]), [])).toBeNull();
  });

  it("a member loses a key holding any permission they no longer have", () => {
    expect(revocationReasonAfterAccessChange(member(["read:volumes"]), ["read:volumes", "write:sandboxes"])).toBe(
      "permissions_unassigned",
    );
    expect(revocationReasonAfterAccessChange(member([]), ["read:volumes"])).toBe("permissions_unassigned");
  });

  it("an owner demoted to member keeps only keys within the new permissions", () => {
    const demoted = fold([accessChanged("owner", []), accessChanged("member", ["write:sandboxes"])]);
    expect(revocationReasonAfterAccessChange(demoted, ["write:sandboxes"])).toBeNull();
    expect(revocationReasonAfterAccessChange(demoted, ["write:sandboxes", "delete:sandboxes"])).toBe(
      "permissions_unassigned",
    );
  });
});
