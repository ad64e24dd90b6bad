import { isPermission, MEMBER_ROLES, type MemberRole } from "@keyledger/domain";
import { type CliCommand, parseFlags, UsageError } from "../command";

const DURATION = /^(\d+)([smhd])$/;
const SECONDS = { s: 1, m: 60, h: 3600, d: 86_400 } as const;

/**
 * The running API's base URL: `--api-url`, else `KEYLEDGER_API_URL`, else this machine on `PORT` (3000). A bad
 * value is refused naming where it came from, and must be http(s) (`localhost:3000` is the scheme "localhost:").
 */
export function apiUrl(flags: Record<string, string>, env: Record<string, string | undefined>): string {
  const [source, raw] =
    flags["api-url"] !== undefined
      ? ["--api-url", flags["api-url"]]
      : env.KEYLEDGER_API_URL
        ? ["KEYLEDGER_API_URL", env.KEYLEDGER_API_URL]
        : ["PORT", `http://127.0.0.1:${env.PORT || 3000}`];
  if (source === "PORT" && env.PORT && !/^\d{1,5}$/.test(env.PORT)) {
    throw new UsageError(`PORT must be a port number, got "${env.PORT}"`);
  }
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new UsageError(`${source} "${raw}" is not a URL`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new UsageError(`${source} must be an http(s) URL such as http://127.0.0.1:3000, got "${raw}"`);
  }
  return parsed.toString().replace(/\/+$/, "");
}

function required(flags: Record<string, string>, name: string): string {
  const value = flags[name];
  if (value === undefined || value === "true" || value === "") throw new UsageError(`--${name} is required`);
  return value;
}

/**
 * Asks the running API (in development-issuer mode) to record a membership and sign a JWT for it. It never opens
 * the embedded database itself: PGlite serves one process at a time, and the API has it open.
 */
export const devTokenCommand: CliCommand = {
  name: "dev-token",
  summary: "development only: record a membership and print a JWT signed by the running API's development issuer",
  usage:
    "keyledger dev-token --user <id> --org <id> --role owner|member [--permissions a,b] [--expires-in 12h] [--api-url URL]",
  examples: [
    "pnpm keyledger dev-token --user alice --org acme --role owner",
    "TOKEN=$(pnpm -s keyledger dev-token --user bob --org acme --role member --permissions write:sandboxes,read:volumes)",
  ],
  async run(args, env) {
    const flags = parseFlags(args, ["user", "org", "role", "permissions", "expires-in", "api-url"]);
    const userId = required(flags, "user");
    const organizationId = required(flags, "org");
    const role = required(flags, "role");
    if (!(MEMBER_ROLES as readonly string[]).includes(role)) {
      throw new UsageError(`--role must be one of ${MEMBER_ROLES.join(", ")}, got "${role}"`);
    }
    const permissions = (flags.permissions ?? "")
      .split(",")
      .map((p) => p.trim())
      .filter((p) => p.length > 0);
    const unknown = permissions.filter((p) => !isPermission(p));
    if (unknown.length > 0) throw new UsageError(`unknown permission(s): ${unknown.join(", ")}`);
    let expiresInSeconds: number | undefined;
    if (flags["expires-in"] !== undefined) {
      const match = DURATION.exec(flags["expires-in"]);
      if (!match) throw new UsageError(`--expires-in must look like 90m, 12h or 7d, got "${flags["expires-in"]}"`);
      expiresInSeconds = Number(match[1]) * SECONDS[match[2] as keyof typeof SECONDS];
    }
    const base = apiUrl(flags, env);

    let response: Response;
    try {
      response = await fetch(`${base}/dev/tokens`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ userId, organizationId, role: role as MemberRole, permissions, expiresInSeconds }),
        signal: AbortSignal.timeout(15_000),
      });
    } catch {
      throw new Error(
        `no keyledger API answers at ${base}; start it with \`pnpm start\` (or pass --api-url): ` +
          "dev-token asks the running API, which records the membership and signs the token",
      );
    }
    const body = (await response.json().catch(() => ({}))) as {
      token?: string;
      expiresAt?: string;
      message?: string | string[];
    };
    if (response.status === 404) {
      throw new Error(
        `the API at ${base} has no development issuer (OIDC is configured, or NODE_ENV=production): ` +
          "get a token from your identity provider",
      );
    }
    if (!response.ok || typeof body.token !== "string") {
      const message = Array.isArray(body.message) ? body.message.join("; ") : (body.message ?? response.statusText);
      throw new Error(`the API refused (${response.status}): ${message}`);
    }
    process.stderr.write(
      `${userId} is ${role} of ${organizationId}${permissions.length ? ` with ${permissions.join(", ")}` : ""}; ` +
        `token expires ${body.expiresAt}\n`,
    );
    process.stdout.write(`${body.token}\n`);
    return 0;
  },
};
