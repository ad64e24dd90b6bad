import { mkdir, readFile, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { PGlite, type Results, type Transaction, types } from "@electric-sql/pglite";
import {
  type CompiledQuery,
  type DatabaseConnection,
  type Driver,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryResult,
} from "kysely";

/** Another live process has the embedded database open; PGlite serves one process at a time. */
export class EmbeddedDatabaseBusy extends Error {
  constructor(
    readonly dataDir: string,
    readonly pid: number,
  ) {
    super(`the embedded database in ${dataDir} is in use by process ${pid}`);
    this.name = "EmbeddedDatabaseBusy";
  }
}

export type EmbeddedDatabaseOptions = {
  /** Directory holding the database (in `pgdata/`) and its lock file; undefined keeps everything in memory. */
  dataDir: string | undefined;
};

const LOCK_FILE = "embedded-database.lock";

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Who holds the data directory's lock, if a live process does. */
export async function embeddedDatabaseHolder(dataDir: string): Promise<number | undefined> {
  const text = await readFile(join(dataDir, LOCK_FILE), "utf8").catch(() => undefined);
  if (text === undefined) return undefined;
  const pid = Number((JSON.parse(text) as { pid?: unknown }).pid);
  return Number.isInteger(pid) && pid > 0 && isAlive(pid) ? pid : undefined;
}

/** Takes the data directory for this process; a lock left by a process that has died is taken over. */
async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  const path = join(dataDir, LOCK_FILE);
  const content = JSON.stringify({ pid: process.pid, startedAt: new Date().toISOString() });
  for (let attempt = 0; ; attempt++) {
    try {
      await writeFile(path, content, { flag: "wx", mode: 0o600 });
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw error;
      const holder = await embeddedDatabaseHolder(dataDir).catch(() => undefined);
      if (holder !== undefined) throw new EmbeddedDatabaseBusy(dataDir, holder);
      await unlink(path).catch(() => {});
    }
  }
  return async () => {
    const text = await readFile(path, "utf8").catch(() => "");
    if (text === content) await unlink(path).catch(() => {});
  };
}

type OpenTransaction = { tx: Transaction; decide: (rollback: boolean) => void; completion: Promise<void> };

/** One Kysely "connection": plain queries go straight to PGlite, queries in a transaction to its handle. */
class PGliteConnection implements DatabaseConnection {
  private open: OpenTransaction | undefined;

  constructor(private readonly pglite: PGlite) {}

  async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    const target = this.open?.tx ?? this.pglite;
    // Like node-postgres: without parameters, the simple protocol, which takes several statements (migrations).
    const result: Results<unknown> =
      compiled.parameters.length === 0
        ? ((await target.exec(compiled.sql, { rowMode: "object" })).at(-1) ?? { rows: [], fields: [] })
        : await target.query<R>(compiled.sql, [...compiled.parameters], { rowMode: "object" });
    const changed = result.affectedRows;
    return {
      rows: result.rows as R[],
      ...(changed !== undefined && result.command !== "SELECT" ? { numAffectedRows: BigInt(changed) } : {}),
    };
  }

  // biome-ignore lint/correctness/useYield: streaming is not offered by this driver
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error("the embedded database does not stream query results");
  }

  /**
   * Opens a PGlite transaction and holds it until `end`. PGlite queues every other query and transaction behind
   * it, which is what a database with a single connection needs.
   */
  async begin(): Promise<void> {
    if (this.open) throw new Error("a transaction is already open on this connection");
    let decide!: (rollback: boolean) => void;
    const decision = new Promise<boolean>((resolve) => {
      decide = resolve;
    });
    let completion!: Promise<void>;
    const tx = await new Promise<Transaction>((resolve, reject) => {
      completion = this.pglite.transaction(async (handle) => {
        resolve(handle);
        if (await decision) await handle.rollback();
      });
      completion.catch(reject);
    });
    this.open = { tx, decide, completion };
  }

  async end(rollback: boolean): Promise<void> {
    const open = this.open;
    if (!open) throw new Error("no transaction is open on this connection");
    this.open = undefined;
    open.decide(rollback);
    await open.completion;
  }
}

class PGliteDriver implements Driver {
  constructor(
    private readonly pglite: PGlite,
    private readonly release: () => Promise<void>,
  ) {}

  async init(): Promise<void> {
    await this.pglite.waitReady;
  }

  async acquireConnection(): Promise<DatabaseConnection> {
    return new PGliteConnection(this.pglite);
  }

  async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await (connection as PGliteConnection).begin();
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    await (connection as PGliteConnection).end(false);
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    await (connection as PGliteConnection).end(true);
  }

  async releaseConnection(): Promise<void> {}

  async destroy(): Promise<void> {
    if (!this.pglite.closed) await this.pglite.close();
    await this.release();
  }
}

/**
 * A Kysely over PGlite (Postgres compiled to WebAssembly, in this process), with its data in `dataDir/pgdata`.
 * Values come back as node-postgres returns them (bigint and xid8 as strings, timestamptz as Date), so the event
 * store and read model run unchanged. Throws `EmbeddedDatabaseBusy` when another live process has the directory.
 */
export async function openEmbeddedDatabase(options: EmbeddedDatabaseOptions): Promise<Kysely<unknown>> {
  let release = async () => {};
  let pgdata: string | undefined;
  if (options.dataDir !== undefined) {
    await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
    release = await lockDataDir(options.dataDir);
    pgdata = join(options.dataDir, "pgdata");
  }
  try {
    const pglite = await PGlite.create({
      ...(pgdata !== undefined ? { dataDir: pgdata } : {}),
      parsers: { [types.INT8]: (value: string) => value },
    });
    const driver = new PGliteDriver(pglite, release);
    return new Kysely<unknown>({
      dialect: {
        createAdapter: () => new PostgresAdapter(),
        createDriver: () => driver,
        createIntrospector: (db) => new PostgresIntrospector(db),
        createQueryCompiler: () => new PostgresQueryCompiler(),
      },
    });
  } catch (error) {
    await release();
    throw error;
  }
}
