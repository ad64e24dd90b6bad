import type { TestIssuer } from "./api";
import type { Figure } from "./report";

export type BenchContext = {
  quick: boolean;
  /** Postgres server URL; each scenario creates (and drops) its own database on it. */
  adminDatabaseUrl: string;
  /** NATS server for scenarios that need one (their own stream names). */
  natsUrl: string;
  /** The test OIDC issuer every API process trusts. */
  issuer: TestIssuer;
  /** Where `--profile` writes CPU profiles; undefined: no profiling. */
  profileDir: string | undefined;
  log(message: string): void;
};

export type Scenario = {
  id: string;
  title: string;
  /** A reason the scenario cannot run in this checkout (e.g. the code it measures has not landed), or null. */
  unavailable?(): Promise<string | null>;
  run(context: BenchContext): Promise<Figure[]>;
};

/** Picks the full or the quick value. */
export function size<T>(context: BenchContext, full: T, quick: T): T {
  return context.quick ? quick : full;
}
