import { runTsForJson } from "../lib/processes";
import type { Figure } from "../lib/report";
import { type Scenario, size } from "../lib/scenario";

export type CeilingResult = { opsPerSecond: number; ops: number; seconds: number; cryptoHash: boolean };

export function measureVerifyCeiling(seconds: number): Promise<CeilingResult> {
  return runTsForJson<CeilingResult>({
    name: "verify ceiling",
    script: "bench/micro/verify-ceiling.ts",
    args: [String(seconds)],
  });
}

/** The raw SHA-256 + Map.get rate on its own (the in-process verify() figure, when it exists, is divided by it). */
export const verifyCeilingScenario: Scenario = {
  id: "verify-ceiling",
  title: "raw crypto.hash('sha256') + Map.get ops/s (the verify ceiling)",
  async run(context) {
    const result = await measureVerifyCeiling(size(context, 5, 2));
    context.log(`${result.opsPerSecond.toFixed(0)} ops/s`);
    const figure: Figure = {
      id: "verify-ceiling",
      label: "raw `crypto.hash('sha256')` + `Map.get` (baseline)",
      value: result.opsPerSecond,
      unit: "ops/s",
      goal: "baseline",
      pass: null,
      boundBy: "CPU in Node (SHA-256 of 68 bytes, hex encoding)",
      details: { cryptoHash: String(result.cryptoHash) },
    };
    return [figure];
  },
};
