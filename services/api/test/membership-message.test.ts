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
