import pg from "pg";

/** Postgres notifications by channel. Handlers also run (with payload "") after every (re)connect. */
export type NotificationSource = {
  subscribe(channel: string, handler: (payload: string) => void): () => void;
};

export type PgNotificationListenerOptions = {
  connectionString: string;
  reconnectDelayMs?: number;
  onError?: (error: Error) => void;
};

const CHANNEL = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * `LISTEN` on a dedicated connection (a pooled one would hand notifications to whoever borrows it next). Reconnects
 * after errors; since notifications sent while disconnected are lost, every handler is called once on reconnect
 * so that consumers read what they missed.
 */
export class PgNotificationListener implements NotificationSource {
  private client: pg.Client | undefined;
  private readonly handlers = new Map<string, Set<(payload: string) => void>>();
  private closed = false;
  private connecting: Promise<void> | undefined;
  private retry: NodeJS.Timeout | undefined;

  constructor(private readonly options: PgNotificationListenerOptions) {}

  subscribe(channel: string, handler: (payload: string) => void): () => void {
    if (!CHANNEL.test(channel)) throw new Error(`invalid channel name "${channel}"`);
    let set = this.handlers.get(channel);
    if (!set) {
      set = new Set();
      this.handlers.set(channel, set);
      if (this.client) this.client.query(`LISTEN ${channel}`).catch((error) => this.failed(error));
    }
    set.add(handler);
    void this.connect();
    return () => {
      set.delete(handler);
    };
  }

  /** Resolves once connected and listening (for tests and start-up ordering). */
  ready(): Promise<void> {
    return this.connect();
  }

  private connect(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.client) return Promise.resolve();
    if (this.connecting) return this.connecting;
    const client = new pg.Client({ connectionString: this.options.connectionString });
    this.connecting = (async () => {
      try {
        client.on("error", (error) => this.failed(error, client));
        client.on("end", () => this.failed(new Error("connection ended"), client));
        client.on("notification", (message) => {
          for (const handler of this.handlers.get(message.channel) ?? []) handler(message.payload ?? "");
        });
        await client.connect();
        for (const channel of this.handlers.keys()) await client.query(`LISTEN ${channel}`);
        if (this.closed) {
          await client.end().catch(() => {});
          return;
        }
        this.client = client;
        for (const set of this.handlers.values()) for (const handler of set) handler("");
      } catch (error) {
        this.failed(error as Error, client);
      } finally {
        this.connecting = undefined;
      }
    })();
    return this.connecting;
  }

  private failed(error: Error, client?: pg.Client): void {
    if (client && this.client && client !== this.client) return;
    if (!this.closed) this.options.onError?.(error);
    const dead = client ?? this.client;
    this.client = undefined;
    dead?.removeAllListeners("notification");
    dead?.end().catch(() => {});
    if (this.closed || this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.connect();
    }, this.options.reconnectDelayMs ?? 1000);
    this.retry.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.retry) clearTimeout(this.retry);
    await this.connecting;
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => {});
  }
}
