import { type ChildProcess, spawn } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { onInterrupt } from "./cleanup";

/** `getconf CLK_TCK` on Linux. */
const CLOCK_TICKS_PER_SECOND = 100;

export const REPO_ROOT = new URL("../../", import.meta.url).pathname;

/** A free TCP port on loopback (bound and released; good enough for a child that binds it right away). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export type ChildService = {
  name: string;
  pid: number;
  /** Resident set size of the child, in bytes (from /proc). */
  rss(): Promise<number>;
  /** CPU time (user + system) the child has used so far, in milliseconds (from /proc, 10 ms resolution). */
  cpuMs(): Promise<number>;
  /** The last lines the child wrote (stdout and stderr), for error messages. */
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the child has exited. */
  stop(graceMs?: number): Promise<void>;
  exited: Promise<number | null>;
};

export type SpawnOptions = {
  name: string;
  /** A TypeScript entry point, relative to the repository root. */
  script: string;
  args?: string[];
  env?: Record<string, string | undefined>;
  /** Extra node flags, e.g. `--cpu-prof`. */
  nodeFlags?: string[];
};

/**
 * Runs a TypeScript entry point in its own Node process (`node --import tsx`, one process, so the pid is the
 * server's own and its load never shares the runner's event loop).
 */
export function spawnTs(options: SpawnOptions): ChildService {
  const child: ChildProcess = spawn(
    process.execPath,
    [...(options.nodeFlags ?? []), "--import", "tsx", options.script, ...(options.args ?? [])],
    {
      cwd: REPO_ROOT,
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let tail = "";
  const keep = (chunk: Buffer) => {
    tail = (tail + chunk.toString()).slice(-8000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  if (child.pid === undefined) throw new Error(`could not start ${options.name}`);
  // Interrupted runs stop their servers before dropping their databases.
  const unregister = onInterrupt(async () => {
    child.kill("SIGKILL");
    await exited;
  });
  void exited.then(unregister);
  const pid = child.pid;
  return {
    name: options.name,
    pid,
    exited,
    output: () => tail,
    async rss() {
      const status = await readFile(`/proc/${pid}/status`, "utf8");
      const match = /VmRSS:\s+(\d+)\s+kB/.exec(status);
      if (!match?.[1]) throw new Error(`no VmRSS for ${options.name}`);
      return Number(match[1]) * 1024;
    },
    async cpuMs() {
      const cpu = await processCpuMs(String(pid));
      if (cpu === undefined) throw new Error(`${options.name} has exited`);
      return cpu;
    },
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** CPU time (user + system, ms) a process has used so far, from /proc; undefined once it has exited. */
async function processCpuMs(pid: string): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15 (clock ticks).
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/**
 * The CPU time (ms) of each Postgres backend connected to `databaseName` on this machine, by pid (their command
 * line names the database: `postgres: ... <user> <database> <client> <state>`). Empty when Postgres runs elsewhere.
 */
export async function databaseBackendsCpu(databaseName: string): Promise<Map<string, number>> {
  const byPid = new Map<string, number>();
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    const command = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (!command.startsWith("postgres:") || !command.split(/[\s\0]+/).includes(databaseName)) continue;
    const cpu = await processCpuMs(pid);
    if (cpu !== undefined) byPid.set(pid, cpu);
  }
  return byPid;
}

/** CPU (ms) the backends used between two `databaseBackendsCpu` snapshots (a backend new in `after` counts whole). */
export function backendsCpuBetween(before: Map<string, number>, after: Map<string, number>): number {
  let total = 0;
  for (const [pid, cpu] of after) total += cpu - (before.get(pid) ?? 0);
  return total;
}

/** Polls `url` until it answers `expectStatus`; fails early if the child exits. */
export async function waitForHttp(
  service: ChildService,
  url: string,
  options: {
    timeoutMs?: number;
    expectStatus?: number;
    headers?: Record<string, string>;
    /** Also wait until the JSON body satisfies this. */
    until?: (body: unknown) => boolean;
  } = {},
): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  let exited = false;
  void service.exited.then(() => {
    exited = true;
  });
  let last = "";
  while (Date.now() < deadline) {
    if (exited) throw new Error(`${service.name} exited while starting:\n${service.output()}`);
    try {
      const res = await fetch(url, { headers: options.headers });
      const text = await res.text();
      if (res.status === (options.expectStatus ?? 200)) {
        if (options.until === undefined || options.until(JSON.parse(text))) return;
      }
      last = `status ${res.status}: ${text.slice(0, 200)}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(100);
  }
  throw new Error(`${service.name} not ready at ${url} (${last}):\n${service.output()}`);
}

/** Runs a TypeScript script to completion and parses the JSON object it prints on its last stdout line. */
export async function runTsForJson<T>(options: SpawnOptions & { timeoutMs?: number }): Promise<T> {
  const child = spawn(
    process.execPath,
    [...(options.nodeFlags ?? []), "--import", "tsx", options.script, ...(options.args ?? [])],
    { cwd: REPO_ROOT, env: { ...process.env, ...options.env }, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-8000);
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 300_000);
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  const unregister = onInterrupt(async () => {
    child.kill("SIGKILL");
    await exited;
  });
  const code = await exited;
  unregister();
  clearTimeout(timer);
  if (code !== 0) throw new Error(`${options.name} exited with ${code}:\n${stderr}\n${stdout.slice(-2000)}`);
  const lines = stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1] ?? "{}") as T;
}
