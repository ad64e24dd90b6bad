import { randomBytes } from "node:crypto";
import { runMigrations } from "@keyledger/event-store";
import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { startTestServices } from "./test-services";

declare module "vitest" {
  export interface ProvidedContext {
    databaseUrl: string;
    adminDatabaseUrl: string;
    natsUrl: string;
  }
}

/**
 * The server the tests use: `DATABASE_URL` if set (the setup sets it to the server it chose),
 * else the local Postgres (CI and the dev machine).
 */
export function adminDatabaseUrl(): string {
  return process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
}

export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

function connect(url: string): Kysely<unknown> {
  return new Kysely({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 2 }) }) });
}

/** Creates a uniquely named database for this run, migrates it, and drops it afterwards. */
export default async function setup(project: TestProject) {
  // DATABASE_URL / NATS_URL if set; else containers when a Docker engine answers; else the local services.
  // Test workers start after this and inherit the environment, so they see the same URLs.
  const services = await startTestServices(process.env);
  process.env.DATABASE_URL = services.postgresUrl;
  process.env.NATS_URL = services.natsUrl;
  process.stdout.write(`keyledger tests: ${services.description}\n`);
  project.provide("natsUrl", services.natsUrl);
  const admin = adminDatabaseUrl();
  const name = `keyledger_test_${Date.now()}_${randomBytes(3).toString("hex")}`;
  const server = connect(admin);
  await sql.raw(`CREATE DATABASE "${name}"`).execute(server);
  const url = withDatabase(admin, name);
  const db = connect(url);
  await runMigrations(db);
  await db.destroy();
  project.provide("databaseUrl", url);
  project.provide("adminDatabaseUrl", admin);
  return async () => {
    await sql.raw(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).execute(server);
    await server.destroy();
    await services.stop();
  };
}
