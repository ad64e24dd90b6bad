import { median } from "../lib/load";
import { benchNatsNames } from "../lib/nats";
import { runTsForJson } from "../lib/processes";
import type { Figure } from "../lib/report";
import { type Scenario, size } from "../lib/scenario";

type VerifyHitResult = {
  ceilingRounds: number[];
  verifyRounds: number[];
  cryptoHash: boolean;
  verifierMisses: number;
};

/**
 * `verify()` cache hits per second in one process ÷ the raw SHA-256 + `Map.get` rate, in alternating rounds in the
 * same child process. The verifier subscribes on a subject prefix of its own (nothing is published there).
 */
export const verifyInProcessScenario: Scenario = {
  id: "verify-in-process",
  title: "in-process verify() cache hit vs raw crypto.hash('sha256') + Map.get",
  async run(context) {
    const { subjectPrefix } = benchNatsNames("verify-hit");
    const result = await runTsForJson<VerifyHitResult>({
      name: "verify-hit",
      script: "bench/micro/verify-hit.ts",
      args: [String(size(context, 3, 1)), String(size(context, 5, 2)), context.natsUrl, subjectPrefix],
    });
    const ceiling = median(result.ceilingRounds);
    const verify = median(result.verifyRounds);
    const ratio = verify / ceiling;
    context.log(`ceiling ${ceiling.toFixed(0)} ops/s, verify() hit ${verify.toFixed(0)} ops/s`);
    const figure: Figure = {
      id: "verify-in-process",
      label: "in-process `verify()` cache hits/s",
      value: verify,
      unit: "ops/s",
      baseline: { label: "sha256 + Map.get", value: ceiling, unit: "ops/s" },
      ratio,
      goal: "≥ 0.45×",
      pass: ratio >= 0.45,
      boundBy: "CPU in Node: SHA-256 of the value, then one Map lookup and an already-resolved promise",
      details: {
        cryptoHash: String(result.cryptoHash),
        verifierMisses: result.verifierMisses,
        ceilingRounds: result.ceilingRounds.map(Math.round).join(" "),
        verifyRounds: result.verifyRounds.map(Math.round).join(" "),
      },
    };
    return [figure];
  },
};
