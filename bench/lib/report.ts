import { readFileSync } from "node:fs";
import { cpus, freemem, loadavg, totalmem } from "node:os";

/** One row of the results table. */
export type Figure = {
  id: string;
  label: string;
  value: number;
  unit: string;
  /** The in-run baseline this figure is divided by. */
  baseline?: { label: string; value: number; unit: string };
  ratio?: number;
  goal: string;
  /** Whether the goal is met; null when there is no goal to judge (informational rows). */
  pass: boolean | null;
  /** What limits the figure: CPU in Node, Postgres commit, network, ... */
  boundBy: string;
  /** Secondary numbers (percentiles, counts) kept in the JSON results. */
  details?: Record<string, number | string>;
};

export type SkippedScenario = { id: string; reason: string };

export type Machine = {
  cpuModel: string;
  cores: number;
  ramGiB: number;
  node: string;
  postgres: string;
  nats: string;
  platform: string;
  /**
   * Whether the CPU says it runs under a hypervisor (the `hypervisor` flag in /proc/cpuinfo; undefined where there is
   * none to read). In a virtual machine every system call and every wake-up of another process can cost far more
   * than on bare metal, and those dominate the latency figures.
   */
  virtualMachine?: boolean;
  /** 1-minute load average when the run started and ended: other work on the machine shows here. */
  loadAverageAtStart: number;
  loadAverageAtEnd?: number;
  freeRamGiBAtStart: number;
};

export type RunResults = {
  startedAt: string;
  finishedAt: string;
  command: string;
  mode: "full" | "quick";
  gitCommit: string;
  machine: Machine;
  figures: Figure[];
  skipped: SkippedScenario[];
  failed: SkippedScenario[];
};

export function describeMachine(postgres: string, nats: string): Machine {
  const cpuList = cpus();
  return {
    cpuModel: cpuList[0]?.model.trim() ?? "unknown",
    cores: cpuList.length,
    ramGiB: round(totalmem() / 2 ** 30, 1),
    node: process.version,
    postgres,
    nats,
    platform: `${process.platform} ${process.arch}`,
    virtualMachine: runsUnderHypervisor(),
    loadAverageAtStart: round(loadavg()[0] ?? 0, 2),
    freeRamGiBAtStart: round(freemem() / 2 ** 30, 1),
  };
}

function runsUnderHypervisor(): boolean | undefined {
  try {
    return /^flags\s*:.*\bhypervisor\b/m.test(readFileSync("/proc/cpuinfo", "utf8"));
  } catch {
    return undefined;
  }
}

export function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/**
 * A ratio with three decimals, cut rather than rounded, so that a ratio just under a goal is never shown at the goal
 * (0.7995 is "0.799", not "0.8").
 */
export function formatRatio(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  return (Math.floor(value * 1000) / 1000).toFixed(3);
}

/** A number for the table: thousands separated, a sensible number of decimals. */
export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : 3;
  return value.toLocaleString("en-US", { minimumFractionDigits: 0, maximumFractionDigits: digits });
}

function formatValue(value: number, unit: string): string {
  return `${formatNumber(value)} ${unit}`.trim();
}

function verdict(pass: boolean | null): string {
  return pass === null ? "–" : pass ? "yes" : "**no**";
}

/** The results as a Markdown table (also what the terminal shows). */
export function markdownTable(figures: readonly Figure[]): string {
  const lines = [
    "| figure | measured | in-run baseline | ratio | goal | met | bound by |",
    "|---|---|---|---|---|---|---|",
  ];
  for (const f of figures) {
    const baseline = f.baseline ? `${f.baseline.label}: ${formatValue(f.baseline.value, f.baseline.unit)}` : "";
    const ratio = f.ratio === undefined ? "" : `${formatRatio(f.ratio)}×`;
    lines.push(
      `| ${f.label} | ${formatValue(f.value, f.unit)} | ${baseline} | ${ratio} | ${f.goal} | ${verdict(f.pass)} | ${f.boundBy} |`,
    );
  }
  return lines.join("\n");
}

export function machineLine(m: Machine): string {
  return (
    `${m.cores} cores (${m.cpuModel}), ${m.ramGiB} GiB RAM, Node ${m.node}, PostgreSQL ${m.postgres}, ` +
    `NATS ${m.nats}, ${m.platform}${m.virtualMachine ? " (a virtual machine)" : ""}; 1-min load average ${m.loadAverageAtStart} at start` +
    (m.loadAverageAtEnd === undefined ? "" : `, ${m.loadAverageAtEnd} at end`)
  );
}
