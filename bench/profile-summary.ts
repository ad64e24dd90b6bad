/**
 * Summarises a V8 `.cpuprofile` (from `node --cpu-prof`, e.g. `pnpm bench --profile`): the functions with the most
 * self time, and self time per package, as shares of the busy (non-idle) time after the first `--skip` seconds
 * (start-up: module loading). Usage:
 *   node --import tsx bench/profile-summary.ts <file> [--top 25] [--skip 5] [--callers <function name>] [--inclusive]
 */
import { readFileSync } from "node:fs";

type ProfileNode = {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
};
type Profile = { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number };

process.stdout.on("error", () => process.exit(0)); // piped into head
const argv = process.argv.slice(2);
const option = (name: string): string | undefined => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const file = argv[0];
if (!file || file.startsWith("--")) {
  process.stderr.write(
    "usage: node --import tsx bench/profile-summary.ts <file> [--top N] [--skip s] [--callers fn]\n",
  );
  process.exit(64);
}
const top = Number(option("top") ?? 25);
const skipMicros = Number(option("skip") ?? 5) * 1e6;
const callersOf = option("callers");
const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;

const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const selfMicros = new Map<number, number>();
let elapsed = 0;
let idle = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i] as number;
  const delta = profile.timeDeltas[i] ?? 0;
  elapsed += delta;
  if (elapsed < skipMicros) continue;
  if (byId.get(id)?.callFrame.functionName === "(idle)") {
    idle += delta;
    continue;
  }
  selfMicros.set(id, (selfMicros.get(id) ?? 0) + delta);
}
const total = [...selfMicros.values()].reduce((a, b) => a + b, 0);

/** Where a function lives: a package name, a workspace path, or a V8/Node category. */
function place(url: string): string {
  if (url === "") return "(native / V8)";
  const pnpm = /node_modules\/\.pnpm\/[^/]+\/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pnpm?.[1]) return pnpm[1];
  const plain = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (plain?.[1]) return plain[1];
  if (url.startsWith("node:")) return "node core";
  const workspace = /\/(packages|services)\/([^/]+)\//.exec(url);
  if (workspace) return `${workspace[1]}/${workspace[2]}`;
  return url.replace(/^file:\/\//, "");
}

const byFunction = new Map<string, number>();
const byPlace = new Map<string, number>();
for (const [id, micros] of selfMicros) {
  const node = byId.get(id);
  if (!node) continue;
  const { functionName, url, lineNumber } = node.callFrame;
  const where = place(url);
  const short = url.replace(/^.*\/(node_modules\/\.pnpm\/[^/]+\/node_modules\/|work\/main\/)/, "");
  const key = `${functionName || "(anonymous)"}  ${short ? `${short}:${lineNumber + 1}` : ""}`.trim();
  byFunction.set(key, (byFunction.get(key) ?? 0) + micros);
  byPlace.set(where, (byPlace.get(where) ?? 0) + micros);
}

const pct = (micros: number) => `${((100 * micros) / total).toFixed(1).padStart(5)}%`;
const ms = (micros: number) => `${(micros / 1000).toFixed(0).padStart(7)} ms`;
process.stdout.write(
  `${file}: ${(total / 1e6).toFixed(1)} s busy, ${(idle / 1e6).toFixed(1)} s idle after the first ` +
    `${skipMicros / 1e6} s; shares are of the busy time\n\nTop self time by function:\n`,
);
for (const [key, micros] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  process.stdout.write(`${pct(micros)} ${ms(micros)}  ${key}\n`);
}
process.stdout.write("\nSelf time by package:\n");
for (const [key, micros] of [...byPlace].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  process.stdout.write(`${pct(micros)} ${ms(micros)}  ${key}\n`);
}

// With --inclusive, total (self + callees) time per function of the application and its packages.
if (argv.includes("--inclusive")) {
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const inclusive = new Map<string, number>();
  for (const [id, micros] of selfMicros) {
    const seen = new Set<string>();
    for (let p: number | undefined = id; p !== undefined; p = parent.get(p)) {
      const frame = byId.get(p)?.callFrame;
      if (!frame || frame.url === "" || frame.url.startsWith("node:")) continue;
      const key = `${frame.functionName || "(anonymous)"}  ${place(frame.url)}:${frame.lineNumber + 1}`;
      if (seen.has(key)) continue;
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + micros);
    }
  }
  process.stdout.write("\nInclusive time by function (application and packages):\n");
  for (const [key, micros] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    process.stdout.write(`${pct(micros)} ${ms(micros)}  ${key}\n`);
  }
}

// With --callers, where the time of that function comes from: its callers' stacks, heaviest first.
if (callersOf) {
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const stacks = new Map<string, number>();
  for (const [id, micros] of selfMicros) {
    if (byId.get(id)?.callFrame.functionName !== callersOf) continue;
    const frames: string[] = [];
    for (let p = parent.get(id); p !== undefined && frames.length < 12; p = parent.get(p)) {
      const frame = byId.get(p)?.callFrame;
      if (!frame || frame.functionName === "(root)") break;
      frames.push(`${frame.functionName || "(anonymous)"}@${place(frame.url)}`);
    }
    const key = frames.join(" < ");
    stacks.set(key, (stacks.get(key) ?? 0) + micros);
  }
  process.stdout.write(`\nCallers of ${callersOf}:\n`);
  for (const [key, micros] of [...stacks].sort((a, b) => b[1] - a[1]).slice(0, 10)) {
    process.stdout.write(`${pct(micros)} ${ms(micros)}  ${key}\n`);
  }
}
