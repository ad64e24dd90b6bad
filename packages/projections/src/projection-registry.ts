import type { KeyledgerEvent } from "@keyledger/domain";
import type { Kysely } from "kysely";
import { applyEventsToReadModel, type KnownRows } from "./read-model-projection";

/** A projection of the log into tables that `rebuild` can drop and recompute. */
export type ProjectionDefinition = {
  name: string;
  /** Its tables, in the order the writers lock them (a rebuild's swap locks them in this order too). */
  tables: readonly string[];
  /**
   * Kept current by the writers themselves, in the transaction that appends the events (the API's inline path).
   * The projector then only records how far it is current and rebuilds it on request; it never re-applies events
   * to the live tables.
   */
  inline: boolean;
  /**
   * Applies a page of events in order, in `trx` (unqualified table names: rebuilds use shadow tables). `known`: rows
   * the caller knows the tables to hold (a rebuild's, between its batches), read from there instead of the tables.
   */
  apply(trx: Kysely<unknown>, events: readonly KeyledgerEvent[], known?: KnownRows): Promise<void>;
};

/** The read model the API serves from: keys and the memberships they are authorized against. */
export const API_KEYS_PROJECTION: ProjectionDefinition = {
  name: "api_keys",
  tables: ["organization_members", "api_keys"],
  inline: true,
  apply: applyEventsToReadModel,
};

export const PROJECTIONS: readonly ProjectionDefinition[] = [API_KEYS_PROJECTION];

export function findProjection(name: string): ProjectionDefinition | undefined {
  return PROJECTIONS.find((p) => p.name === name);
}
