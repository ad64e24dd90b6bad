import { assertNever, type MemberEvent } from "./events";
import type { MemberRole, Permission } from "./permissions";

export type MemberState = { status: "absent" } | { status: "member"; role: MemberRole; permissions: Permission[] };

export const initialMemberState: MemberState = { status: "absent" };

export type ChangeMemberAccess = {
  type: "ChangeMemberAccess";
  data: { organizationId: string; userId: string; role: MemberRole; permissions: Permission[]; now: Date };
};

export type RemoveMember = {
  type: "RemoveMember";
  data: { organizationId: string; userId: string; now: Date };
};

export type MemberCommand = ChangeMemberAccess | RemoveMember;

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((x) => set.has(x));
}

/** Idempotent: repeating the current access or removing a non-member decides nothing. */
export function decideMember(command: MemberCommand, state: MemberState): MemberEvent[] {
  switch (command.type) {
    case "ChangeMemberAccess": {
      const c = command.data;
      const permissions = [...new Set(c.permissions)].sort();
      if (state.status === "member" && state.role === c.role && sameSet(state.permissions, permissions)) {
        return [];
      }
      return [
        {
          type: "MemberAccessChanged",
          data: {
            organizationId: c.organizationId,
            userId: c.userId,
            role: c.role,
            permissions,
            changedAt: c.now.toISOString(),
          },
        },
      ];
    }
    case "RemoveMember": {
      if (state.status === "absent") return [];
      const c = command.data;
      return [
        {
          type: "MemberRemoved",
          data: { organizationId: c.organizationId, userId: c.userId, removedAt: c.now.toISOString() },
        },
      ];
    }
    default:
      return assertNever(command);
  }
}

export function evolveMember(_state: MemberState, event: MemberEvent): MemberState {
  switch (event.type) {
    case "MemberAccessChanged":
      return { status: "member", role: event.data.role, permissions: event.data.permissions };
    case "MemberRemoved":
      return { status: "absent" };
    default:
      return assertNever(event);
  }
}

/**
 * The rule applied to a member's keys after their access changes: a removed member loses every key;
 * a member (not owner) loses every key holding a permission they no longer have. Owners keep all keys.
 */
export function revocationReasonAfterAccessChange(
  member: MemberState,
  keyPermissions: readonly Permission[],
): "member_removed" | "permissions_unassigned" | null {
  if (member.status === "absent") return "member_removed";
  if (member.role === "owner") return null;
  const held = new Set(member.permissions);
  return keyPermissions.some((p) => !held.has(p)) ? "permissions_unassigned" : null;
}
