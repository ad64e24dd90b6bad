/**
 * `pnpm bench [--quick] [--only id,id] [--profile]`: every performance figure against a baseline measured in the
 * same run on this machine; prints a table, writes bench/results/<date>.json and (full runs) the table in
 * BENCHMARKS.md. See BENCHMARKS.md.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { startTestIssuer } from "./lib/api";
import { installInterruptHandlers } from "./lib/cleanup";
import { adminDatabaseUrl, serverVersion } from "./lib/database";
import { REPO_ROOT } from "./lib/processes";
import {
  describeMachine,
  type Figure,
  machineLine,
  markdownTable,
  type RunResults,
  round,
  type SkippedScenario,
} from "./lib/report";
import type { BenchContext, Scenario } from "./lib/scenario";
import { coldVerifyScenario } from "./scenarios/cold-verify";
import { createKeyScenario } from "./scenarios/create-key";
import { currentKeyScenario } from "./scenarios/current-key";
import { gatewayScenario } from "./scenarios/gateway";
import { listKeysScenario } from "./scenarios/list-keys";
import { memoryScenario } from "./scenarios/memory";
import { rebuildScenario } from "./scenarios/rebuild";
import { verifyInProcessScenario } from "./scenarios/verify-in-process";

const SCENARIOS: Scenario[] = [
  currentKeyScenario,
  createKeyScenario,
  listKeysScenario,
  coldVerifyScenario,
  memoryScenario,
  verifyInProcessScenario,
  gatewayScenario,
  rebuildScenario,
];

type Args = {
  quick: boolean;
  only: string[] | undefined;
  profile: boolean;
  write: boolean;
  /** Re-render BENCHMARKS.md's table from this results file and exit (after a change to the table's format). */
  tableFrom: string | undefined;
};

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, only: undefined, profile: false, write: true, tableFrom: undefined };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === "--") continue;
    if (arg === "--quick") args.quick = true;
    else if (arg === "--profile") args.profile = true;
    else if (arg === "--no-write") args.write = false;
    else if (arg === "--only") args.only = (argv[++i] ?? "").split(",").filter(Boolean);
    else if (arg.startsWith("--only=")) args.only = arg.slice(7).split(",").filter(Boolean);
    else if (arg === "--table-from") args.tableFrom = argv[++i];
    else if (arg === "--list") {
      for (const s of SCENARIOS) process.stdout.write(`${s.id.padEnd(22)} ${s.title}\n`);
      process.exit(0);
    } else {
      process.stderr.write(
        `unknown argument ${arg}\nusage: pnpm bench [--quick] [--only id,id] [--profile] [--list] [--table-from results.json]\n`,
      );
      process.exit(64);
    }
  }
  return args;
}

function natsVersion(): string {
  try {
    return execFileSync("nats-server", ["--version"], { encoding: "utf8" })
      .trim()
      .replace(/^nats-server:\s*/, "");
  } catch {
    return "not found";
  }
}

function gitCommit(): string {
  try {
    return execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: REPO_ROOT, encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
}

const TABLE_START = "<!-- bench:table:start -->";
const TABLE_END = "<!-- bench:table:end -->";

/** Replaces the generated section of BENCHMARKS.md (between the markers) with this run's table. */
function updateBenchmarksMd(results: RunResults, resultsFile: string) {
  const path = join(REPO_ROOT, "BENCHMARKS.md");
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return;
  }
  const start = text.indexOf(TABLE_START);
  const end = text.indexOf(TABLE_END);
  if (start < 0 || end < start) return;
  const otherLoad =
    results.machine.loadAverageAtStart >= 0.5 || (results.machine.loadAverageAtEnd ?? 0) >= 0.5
      ? " Other work was running on the machine (see the load averages), so absolute numbers are noisy; the ratios" +
        " are measured in alternating rounds against baselines from the same minutes."
      : "";
  const section = [
    TABLE_START,
    `Latest full run: ${results.startedAt} (commit \`${results.gitCommit}\`, results in \`${resultsFile}\`).`,
    "",
    `Machine: ${machineLine(results.machine)}.${otherLoad}`,
    "",
    `Command: \`${results.command}\``,
    "",
    markdownTable(results.figures),
    "",
    ...(results.skipped.length > 0
      ? ["Not measured in this run:", "", ...results.skipped.map((s) => `- \`${s.id}\`: ${s.reason}`), ""]
      : []),
    ...(results.failed.length > 0
      ? ["Failed in this run:", "", ...results.failed.map((s) => `- \`${s.id}\`: ${s.reason}`), ""]
      : []),
    TABLE_END,
  ].join("\n");
  writeFileSync(path, text.slice(0, start) + section + text.slice(end + TABLE_END.length));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.tableFrom !== undefined) {
    const file = args.tableFrom;
    const results = JSON.parse(readFileSync(join(REPO_ROOT, file), "utf8")) as RunResults;
    if (results.mode !== "full") throw new Error(`${file} is not a full run's results`);
    updateBenchmarksMd(results, file);
    process.stderr.write(`BENCHMARKS.md: table re-rendered from ${file}\n`);
    return;
  }
  const startedAt = new Date();
  const adminUrl = adminDatabaseUrl(process.env);
  const machine = describeMachine(await serverVersion(adminUrl), natsVersion());
  const log = (message: string) =>
    process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
  log(`machine: ${machineLine(machine)}`);
  const profileDir = args.profile
    ? join(REPO_ROOT, "bench", "profiles", startedAt.toISOString().replace(/[:.]/g, "-"))
    : undefined;
  if (profileDir) mkdirSync(profileDir, { recursive: true });

  installInterruptHandlers(log);
  const issuer = await startTestIssuer();
  const figures: Figure[] = [];
  const skipped: SkippedScenario[] = [];
  const failed: SkippedScenario[] = [];
  const selected = SCENARIOS.filter((s) => args.only === undefined || args.only.includes(s.id));
  try {
    for (const scenario of selected) {
      const reason = (await scenario.unavailable?.()) ?? null;
      if (reason !== null) {
        log(`skip ${scenario.id}: ${reason}`);
        skipped.push({ id: scenario.id, reason });
        continue;
      }
      log(`run ${scenario.id}: ${scenario.title}`);
      const context: BenchContext = {
        quick: args.quick,
        adminDatabaseUrl: adminUrl,
        natsUrl: process.env.BENCH_NATS_URL ?? "nats://127.0.0.1:4222",
        issuer,
        profileDir,
        log: (message) => log(`  ${scenario.id}: ${message}`),
      };
      const began = Date.now();
      try {
        figures.push(...(await scenario.run(context)));
        log(`done ${scenario.id} in ${((Date.now() - began) / 1000).toFixed(1)} s`);
      } catch (error) {
        log(`FAILED ${scenario.id}: ${(error as Error).stack ?? error}`);
        failed.push({ id: scenario.id, reason: ((error as Error).message ?? String(error)).split("\n")[0] ?? "" });
      }
    }
  } finally {
    await issuer.close();
  }

  machine.loadAverageAtEnd = round(loadavg()[0] ?? 0, 2);
  const mode = args.quick ? "quick" : "full";
  const results: RunResults = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    command: `pnpm bench${args.quick ? " --quick" : ""}${args.only ? ` --only ${args.only.join(",")}` : ""}`,
    mode,
    gitCommit: gitCommit(),
    machine,
    figures,
    skipped,
    failed,
  };
  process.stdout.write(`\n${markdownTable(figures)}\n\n`);
  for (const s of skipped) process.stdout.write(`skipped ${s.id}: ${s.reason}\n`);
  for (const s of failed) process.stdout.write(`FAILED ${s.id}: ${s.reason}\n`);
  if (args.write) {
    const date = startedAt.toISOString().slice(0, 10);
    const partial = args.quick || args.only !== undefined;
    const file = `bench/results/${date}${args.quick ? "-quick" : args.only ? "-partial" : ""}.json`;
    mkdirSync(join(REPO_ROOT, "bench", "results"), { recursive: true });
    writeFileSync(join(REPO_ROOT, file), `${JSON.stringify(results, null, 2)}\n`);
    log(`wrote ${file}`);
    if (!partial) {
      updateBenchmarksMd(results, file);
      log("updated BENCHMARKS.md");
    }
  }
  log(`total ${((Date.now() - startedAt.getTime()) / 1000).toFixed(0)} s`);
  if (profileDir) log(`CPU profiles in ${profileDir} (summarise: node --import tsx bench/profile-summary.ts <file>)`);
  process.exitCode = failed.length > 0 ? 1 : 0;
}

await main();
