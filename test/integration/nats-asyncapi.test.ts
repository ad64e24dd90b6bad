import { readFileSync } from "node:fs";
import { EVENT_TYPES, PERMISSIONS } from "@keyledger/domain";
import { eventSubject, keyUseReportSubject, relayHeartbeatSubject } from "@keyledger/nats-bus";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";

type Doc = {
  asyncapi: string;
  channels: Record<string, { address: string; messages: Record<string, { $ref: string }> }>;
  operations: Record<string, { action: string; channel: { $ref: string } }>;
  components: {
    messages: Record<string, { payload: { allOf?: { properties?: { type?: { const?: string } } }[] } }>;
    schemas: { EventEnvelope: { properties: { type: { enum: string[] } } }; Permission: { enum: string[] } };
  };
};

const doc = parse(readFileSync(new URL("../../docs/asyncapi.yaml", import.meta.url), "utf8")) as Doc;

describe("docs/asyncapi.yaml matches the code", () => {
  it("is AsyncAPI 3 and has one channel, message and publish operation per event type", () => {
    expect(doc.asyncapi).toBe("3.0.0");
    expect(doc.components.schemas.EventEnvelope.properties.type.enum.sort()).toEqual([...EVENT_TYPES].sort());
    for (const type of EVENT_TYPES) {
      const channel = Object.entries(doc.channels).find(([, c]) => c.address.endsWith(`.${type}`));
      if (!channel) throw new Error(`no channel for ${type}`);
      const [name, { address, messages }] = channel;
      expect(address.replace("{organizationToken}", "org-1")).toBe(eventSubject("keyledger", "org-1", type));
      expect(Object.values(messages).map((m) => m.$ref)).toEqual([`#/components/messages/${type}`]);
      const typeConst = doc.components.messages[type]?.payload.allOf?.[1]?.properties?.type?.const;
      expect(typeConst).toBe(type);
      const publish = Object.values(doc.operations).find(
        (op) => op.action === "send" && op.channel.$ref === `#/channels/${name}`,
      );
      expect(publish, `send operation for ${type}`).toBeDefined();
    }
  });

  it("names the key-use report subject and the permissions the code uses", () => {
    expect(doc.channels.keyUseReports?.address).toBe(keyUseReportSubject("keyledger"));
    expect(doc.channels.relayHeartbeat?.address).toBe(relayHeartbeatSubject("keyledger"));
    expect(doc.components.schemas.Permission.enum).toEqual([...PERMISSIONS]);
  });
});
