import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, inject, it } from "vitest";

const ROOT = join(import.meta.dirname, "..", "..");

/** Whether a process is alive (signal 0 checks without sending anything). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * `pnpm start` (and `pnpm run start:gateway`) as documented, stopped the way a process manager stops it: SIGTERM
 * (or SIGINT, as pm2 sends) to pnpm's own pid only, not to its process group. pnpm passes the signal to the script's
 * shell; a shell that waits for `tsx` dies of it and leaves the service running, orphaned, still holding its port
 * (and the embedded database's lock). The scripts exec tsx, so the signal reaches the service, which shuts down
 * gracefully.
 */
describe("pnpm start and start:gateway stopped by a signal to pnpm alone", () => {
  const children: ChildProcess[] = [];
  const servicePids: number[] = [];
  // The development issuer's key is written to KEYLEDGER_DATA_DIR: a directory of this test's, not the repository's.
  const dataDir = mkdtempSync(join(tmpdir(), "keyledger-pnpm-signals-"));
  afterAll(() => {
    for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
    for (const pid of servicePids) if (alive(pid)) process.kill(pid, "SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });

  const scripts = [
    {
      script: "start",
      env: { DATABASE_URL: inject("databaseUrl"), PROJECTOR_IN_API: "false", KEYLEDGER_DATA_DIR: dataDir },
      ready: /"pid":(\d+)[^\n]*Server listening at http:\/\/127\.0\.0\.1:\d+/,
    },
    {
      script: "start:gateway",
      env: { GATEWAY_MODE: "forward-auth", API_URL: "http://127.0.0.1:1" },
      ready: /"pid":(\d+)[^\n]*"msg":"gateway listening"/,
    },
  ];
  const cases = scripts.flatMap((s) => (["SIGTERM", "SIGINT"] as const).map((signal) => ({ ...s, signal })));

  it.each(cases)("pnpm $script, $signal: the service shuts down gracefully and pnpm exits", async (testCase) => {
    const child = spawn("pnpm", [testCase.script], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, PORT: "0", HOST: "127.0.0.1", LOG_LEVEL: "info", ...testCase.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(child);
    let output = "";
    child.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));

    const deadline = Date.now() + 45_000;
    let ready: RegExpExecArray | null = null;
    while (ready === null && Date.now() < deadline && child.exitCode === null) {
      ready = testCase.ready.exec(output);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(ready, output).not.toBeNull();
    const servicePid = Number(ready?.[1]);
    servicePids.push(servicePid);

    child.kill(testCase.signal); // pnpm's pid only
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 15_000))]);
    const stopBy = Date.now() + 15_000;
    while (alive(servicePid) && Date.now() < stopBy) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(alive(servicePid), `the service (pid ${servicePid}) outlived pnpm:\n${output}`).toBe(false);
    expect(child.exitCode, output).not.toBeNull();
    expect(output).toMatch(new RegExp(`"signal":"${testCase.signal}","msg":"shutting down"`));
  });
});
