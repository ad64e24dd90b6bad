/** The organization resource permissions an API key can hold: the spec's `Permission` enum, defined once. */
export const PERMISSIONS = [
  "write:registries",
  "delete:registries",
  "write:snapshots",
  "delete:snapshots",
  "write:sandboxes",
  "delete:sandboxes",
  "read:volumes",
  "write:volumes",
  "delete:volumes",
  "write:regions",
  "delete:regions",
  "read:runners",
  "write:runners",
  "delete:runners",
  "read:audit_logs",
] as const;

export type Permission = (typeof PERMISSIONS)[number];

const permissionSet: ReadonlySet<string> = new Set(PERMISSIONS);

export function isPermission(value: unknown): value is Permission {
  return typeof value === "string" && permissionSet.has(value);
}

export const MEMBER_ROLES = ["owner", "member"] as const;
export type MemberRole = (typeof MEMBER_ROLES)[number];

export function isMemberRole(value: unknown): value is MemberRole {
  return value === "owner" || value === "member";
}

/** What a grantor may put on a key: owners anything, members only what their roles hold. */
export function permissionsNotGrantable(
  grantor: { role: MemberRole; permissions: readonly Permission[] },
  requested: readonly Permission[],
): Permission[] {
  if (grantor.role === "owner") return [];
  const held = new Set(grantor.permissions);
  return requested.filter((permission) => !held.has(permission));
}
