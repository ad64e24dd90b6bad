import { describe, expect, it } from "vitest";
import { parseMembershipMessage } from "../src/membership-consumer";

const now = new Date("2030-01-01T00:00:00Z");
const data = new TextEncoder().encode(JSON.stringify({ role: "member", permissions: ["read:volumes"] }));
const parse = (subject: string) => parseMembershipMessage("organizations", { subject, data }, now);

describe("parseMembershipMessage", () => {
  it("turns <prefix>.<org>.members.<user>.updated into ChangeMemberAccess", () => {
    expect(parse("organizations.acme.members.u😀.updated")).toEqual({
      command: {
        type: "ChangeMemberAccess",
        data: { organizationId: "acme", userId: "u😀", role: "member", permissions: ["read:volumes"], now },
      },
    });
    expect(parse("organizations.acme.members.bob.removed")).toEqual({
      command: { type: "RemoveMember", data: { organizationId: "acme", userId: "bob", now } },
    });
  });

  it("keeps the known permissions of an update and names the others; refuses entries that are not names", () => {
    const update = (payload: unknown) =>
      parseMembershipMessage(
        "organizations",
        { subject: "organizations.acme.members.bob.updated", data: new TextEncoder().encode(JSON.stringify(payload)) },
        now,
      );
    expect(update({ role: "member", permissions: ["read:volumes", "fly:rockets", "read:volumes2"] })).toEqual({
      command: {
        type: "ChangeMemberAccess",
        data: { organizationId: "acme", userId: "bob", role: "member", permissions: ["read:volumes"], now },
      },
      unknownPermissions: ["fly:rockets", "read:volumes2"],
    });
    for (const payload of [{ role: "member", permissions: ["read:volumes", null] }, { role: "member" }, null]) {
      expect(update(payload)).toEqual({
        reason: expect.stringMatching(
          /^(permissions must be an array of permission names|role must be owner or member)$/,
        ),
      });
    }
  });

  it("gives a reason, and no command, for ids that cannot be stored", () => {
    for (const subject of [
      "organizations.acme.members.nul\u0000.updated",
      "organizations.acme\u0007.members.bob.removed",
      "organizations.acme.members.\ud800.updated",
      `organizations.acme.members.${"x".repeat(256)}.updated`,
    ]) {
      expect(parse(subject)).toEqual({
        reason: "organization and user ids must be 1-255 characters with no control characters",
      });
    }
  });
});
