import { parseIsoDateTime } from "@keyledger/domain";
import { type OrganizationAsOf, organizationHasEvents, replayOrganizationAsOf } from "@keyledger/projections";
import { type CliCommand, parseFlags, UsageError } from "../command";
import { openMigratedStore, requiredFlag } from "./log-access";

/**
 * `--as-of`: an ISO 8601 date or date-time whose every field is real (no 30 February, no hour 24: nothing rolls
 * over), a space allowed for the `T`. A time without a zone is UTC, as `occurredAt` is, whatever the host's zone;
 * a date alone is its midnight UTC.
 */
export function parseAsOf(raw: string): Date | undefined {
  return parseIsoDateTime(raw.replace(/^(\d{4}-\d{2}-\d{2}) (?=\d)/, "$1T"), { zoneless: "utc" });
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => `  ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ")}`.trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

export function formatAudit(report: OrganizationAsOf): string {
  const lines = [
    `organization ${report.organizationId} as of ${report.asOf}: ${report.eventsReplayed} event(s) replayed` +
      (report.lastPosition ? ` (up to position ${report.lastPosition})` : ""),
    "",
    `keys (${report.keys.length}, ${report.keys.filter((k) => k.validThen).length} valid then):`,
  ];
  if (report.keys.length > 0) {
    lines.push(
      table(
        ["NAME", "OWNER", "ROLE", "PERMISSIONS", "CREATED", "EXPIRES", "STATE", "VALID"],
        report.keys.map((k) => [
          k.name,
          k.userId,
          k.ownerRole ?? "-",
          k.permissions.join(",") || "-",
          k.createdAt,
          k.expiresAt ?? "never",
          k.state === "revoked" ? `revoked (${k.revokedReason})` : k.state,
          k.validThen ? "yes" : "no",
        ]),
      ),
    );
  }
  lines.push("", `members (${report.members.length}):`);
  if (report.members.length > 0) {
    lines.push(
      table(
        ["USER", "ROLE", "PERMISSIONS"],
        report.members.map((m) => [m.userId, m.role, m.permissions.join(",") || "-"]),
      ),
    );
  }
  return `${lines.join("\n")}\n`;
}

export const auditCommand: CliCommand = {
  name: "audit",
  summary: "replay the log up to a time: an organization's keys (permissions, owner, expiry, valid then) and members",
  usage: "keyledger audit --org <id> [--as-of <ISO time (UTC unless it has an offset), default now>] [--json]",
  examples: ["pnpm keyledger audit --org acme --as-of 2025-06-30T23:59:59Z", "pnpm keyledger audit --org acme --json"],
  async run(args, env) {
    const flags = parseFlags(args, ["org", "as-of"], ["json"]);
    const organizationId = requiredFlag(flags, "org");
    let asOf = new Date();
    if (flags["as-of"] !== undefined) {
      const raw = flags["as-of"];
      const parsed = parseAsOf(raw);
      if (parsed === undefined) throw new UsageError(`--as-of must be an ISO 8601 time, got "${raw}"`);
      asOf = parsed;
    }
    const db = await openMigratedStore(env, 1);
    try {
      const report = await replayOrganizationAsOf(db, { organizationId, asOf });
      // Nothing replayed is an organization that had nothing yet, or one the log has never heard of: a mistyped id
      // must not read as "no keys, no members".
      if (report.eventsReplayed === 0 && !(await organizationHasEvents(db, organizationId))) {
        throw new Error(`the log has no events of organization ${JSON.stringify(organizationId)}: check the id`);
      }
      process.stdout.write(flags.json === "true" ? `${JSON.stringify(report, null, 2)}\n` : formatAudit(report));
      return 0;
    } finally {
      await db.destroy();
    }
  },
};
