import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, inject, it } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** Runs a service's real entry point with `env` alone and returns how it ended. */
function runEntryPoint(
  entryPoint: string,
  env: Record<string, string>,
  args: string[] = [],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", entryPoint, ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${entryPoint} did not exit within 20 s:\n${stdout}${stderr}`));
    }, 20_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * An invalid setting stops a service before it does anything: exit code 78 and one line on stderr naming the
 * variable and what it allows (docs/operations.md, Configuration), not a library's error or a stack trace.
 */
describe("a service started with an invalid setting", () => {
  // Nothing may be written or reached should a service start after all: an unreachable database, a fresh directory.
  const dataDir = mkdtempSync(join(tmpdir(), "keyledger-startup-config-"));
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));
  const api = {
    entryPoint: "services/api/src/main.ts",
    env: { PORT: "0", DATABASE_URL: "postgres://127.0.0.1:1/none", KEYLEDGER_DATA_DIR: dataDir },
  };
  const gateway = {
    entryPoint: "services/gateway/src/main.ts",
    env: { PORT: "0", API_URL: "http://127.0.0.1:1", UPSTREAM_URL: "http://127.0.0.1:1" },
  };
  const projector = {
    entryPoint: "services/projector/src/main.ts",
    env: { PORT: "0", DATABASE_URL: "postgres://127.0.0.1:1/none" },
  };

  it.each([
    ["api", api],
    ["gateway", gateway],
    ["projector", projector],
  ])("%s refuses an unknown LOG_LEVEL in one line, exit code 78", async (_name, service) => {
    const result = await runEntryPoint(service.entryPoint, { ...service.env, LOG_LEVEL: "verbose" });
    expect(result.code).toBe(78);
    expect(result.stdout).toBe("");
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
    expect(result.stderr).toMatch(
      /invalid configuration: LOG_LEVEL: must be one of fatal, .*trace, silent, got "verbose"/,
    );
  });

  it.each([
    ["api", "nosuchhost.invalid", api, "ENOTFOUND"],
    ["gateway", "nosuchhost.invalid", gateway, "ENOTFOUND"],
    ["projector", "nosuchhost.invalid", projector, "ENOTFOUND"],
    ["api", "192.0.2.1", api, "EADDRNOTAVAIL"],
  ])(
    "%s refuses HOST=%s, which it cannot listen on, in one line naming HOST, exit code 78",
    async (_name, host, service, code) => {
      const result = await runEntryPoint(service.entryPoint, { ...service.env, HOST: host });
      expect(result.code, result.stderr).toBe(78);
      expect(result.stdout).toBe("");
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
      expect(result.stderr).toContain(`invalid configuration: HOST: cannot listen on "${host}" (${code}): must be`);
    },
  );
});

describe("the CLI with an invalid DATABASE_URL", () => {
  it.each([
    ["localhost:5432", /DATABASE_URL: must be a Postgres URL such as postgres:\/\/user:pass@host:5432\/db$/],
    ["mysql://root:s3cret@127.0.0.1:1/keys", /DATABASE_URL: must be a Postgres URL/],
    ["postgres://root:s3cret@db:port/keys", /DATABASE_URL: is not a valid URL$/],
  ])("%s: refused in one line naming the variable, exit code 78, value not echoed", async (databaseUrl, message) => {
    const result = await runEntryPoint("services/cli/src/main.ts", { DATABASE_URL: databaseUrl }, ["migrate"]);
    expect(result.code).toBe(78);
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
    expect(result.stderr.trim()).toMatch(/^keyledger migrate: invalid configuration: /);
    expect(result.stderr.trim()).toMatch(message);
    expect(result.stderr).not.toContain("s3cret");
  });
});

describe("the gateway started on PORT=0", () => {
  it("logs the port the system picked, where it answers", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "services/gateway/src/main.ts"], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? "",
        PORT: "0",
        HOST: "127.0.0.1",
        GATEWAY_MODE: "forward-auth",
        API_URL: "http://127.0.0.1:1",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    try {
      let output = "";
      child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
      const deadline = Date.now() + 20_000;
      while (!output.includes('"msg":"gateway listening"') && Date.now() < deadline && child.exitCode === null) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const line = output.split("\n").find((entry) => entry.includes('"msg":"gateway listening"'));
      expect(line, output).toBeDefined();
      const { port } = JSON.parse(line as string) as { port: number };
      expect(port).toBeGreaterThan(0);
      expect((await fetch(`http://127.0.0.1:${port}/health/live`)).status).toBe(200);
    } finally {
      child.kill("SIGKILL");
    }
  });
});

describe("the API started on PORT=0 with the development issuer and no PUBLIC_URL", () => {
  const dataDir = mkdtempSync(join(tmpdir(), "keyledger-port-zero-"));
  afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

  it("names the port it listens on in its issuer URL, and its tokens carry it", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "services/api/src/main.ts"], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? "",
        PORT: "0",
        HOST: "127.0.0.1",
        DATABASE_URL: inject("databaseUrl"),
        KEYLEDGER_DATA_DIR: dataDir,
        PROJECTOR_IN_API: "false",
        LOG_LEVEL: "info",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    try {
      let output = "";
      child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
      child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
      const deadline = Date.now() + 30_000;
      let port: string | undefined;
      while (port === undefined && Date.now() < deadline && child.exitCode === null) {
        port = /Server listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(output)?.[1];
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(port, output).toBeDefined();
      const base = `http://127.0.0.1:${port}`;
      const discovery = (await (await fetch(`${base}/.well-known/openid-configuration`)).json()) as {
        issuer: string;
        jwks_uri: string;
      };
      expect(discovery.issuer).toBe(`http://localhost:${port}`);
      expect(discovery.jwks_uri).toBe(`http://localhost:${port}/.well-known/jwks.json`);
      const issued = await fetch(`${base}/dev/tokens`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ userId: "port-zero-user", organizationId: "port-zero-org", role: "owner" }),
      });
      expect(issued.status).toBe(200);
      const { token } = (await issued.json()) as { token: string };
      const payload = JSON.parse(Buffer.from(token.split(".")[1] as string, "base64url").toString()) as { iss: string };
      expect(payload.iss).toBe(`http://localhost:${port}`);
      const listed = await fetch(`${base}/api/api-keys`, {
        headers: { authorization: `Bearer ${token}`, "x-daytona-organization-id": "port-zero-org" },
      });
      expect(listed.status).toBe(200);
    } finally {
      child.kill("SIGKILL");
    }
  });
});
