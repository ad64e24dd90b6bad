import { describe, expect, it } from "vitest";
import { contractPermissions } from "../../../test/support/contract";
import { isMemberRole, isPermission, PERMISSIONS, permissionsNotGrantable } from "../src/index";

describe("PERMISSIONS", () => {
  it("is exactly the contract's Permission enum, in its order", () => {
    expect([...PERMISSIONS]).toEqual(contractPermissions());
  });

  it("has the 15 values and no duplicates", () => {
    expect(PERMISSIONS).toHaveLength(15);
    expect(new Set(PERMISSIONS).size).toBe(15);
  });

  it("isPermission accepts each value and nothing else", () => {
    for (const permission of PERMISSIONS) expect(isPermission(permission)).toBe(true);
    for (const other of ["manage:api_keys", "read:sandboxes", "WRITE:SANDBOXES", "", " write:sandboxes", 1, null]) {
      expect(isPermission(other), String(other)).toBe(false);
    }
  });

  it("isMemberRole accepts owner and member only", () => {
    expect(isMemberRole("owner")).toBe(true);
    expect(isMemberRole("member")).toBe(true);
    expect(isMemberRole("admin")).toBe(false);
    expect(isMemberRole("Owner")).toBe(false);
  });
});

describe("permissionsNotGrantable", () => {
  it("lets an owner grant anything, whatever permissions the owner row lists", () => {
    expect(permissionsNotGrantable({ role: "owner", permissions: [] }, [...PERMISSIONS])).toEqual([]);
  });

  it("lets a member grant only what they hold, and lists the rest in request order", () => {
    const grantor = { role: "member" as const, permissions: ["write:sandboxes" as const, "read:volumes" as const] };
    expect(permissionsNotGrantable(grantor, ["write:sandboxes"])).toEqual([]);
    expect(permissionsNotGrantable(grantor, [])).toEqual([]);
    expect(permissionsNotGrantable(grantor, ["delete:volumes", "write:sandboxes", "read:runners"])).toEqual([
      "delete:volumes",
      "read:runners",
    ]);
  });
});
