import { connect, type NatsConnection } from "@nats-io/transport-node";

/** The subset of a pino logger the bus uses; never given secrets. */
export type BusLogger = {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
};

export const silentLogger: BusLogger = { info() {}, warn() {}, error() {}, debug() {} };

export type NatsLinkOptions = {
  /** One URL or several separated by commas, e.g. `nats://127.0.0.1:4222`. */
  servers: string;
  /** Client name shown by the server's monitoring. */
  name: string;
  /** Wait between reconnect attempts (default 250 ms: an outage ends as soon as the server is back). */
  reconnectTimeWaitMs?: number;
  /**
   * The server does not deliver this connection's own publishes to its own subscriptions (NATS `no_echo`): a
   * process that publishes events and also subscribes to them on this link hands its own events to its
   * subscribers itself.
   */
  noEcho?: boolean;
  /**
   * Longest `close` waits for the drain (the server confirming that everything sent has arrived) before it closes
   * the connection anyway (default 2 s): a hung server never confirms, and shutdown must not wait for the client's
   * ping timeout (20 s), longer than a process is given to stop.
   */
  drainTimeoutMs?: number;
  log?: BusLogger;
};

export type LinkState = "connecting" | "connected" | "disconnected" | "closed";

/**
 * The first entry of a `NATS_URL`-style server list (comma-separated `nats://host:port`, `tls://`, `ws://`, `wss://`,
 * or `host:port`) that is not a server address, or undefined when all are. A path, query or fragment is refused: it
 * is where a mistyped scheme ends up (`nats//host:4222` is the host `nats` with the path `//host:4222`).
 */
export function invalidNatsServer(servers: string): string | undefined {
  for (const server of servers.split(",")) {
    const entry = server.trim();
    let parsed: URL;
    try {
      parsed = new URL(entry.includes("://") ? entry : `nats://${entry}`);
    } catch {
      return entry;
    }
    const isAddress =
      ["nats:", "tls:", "ws:", "wss:"].includes(parsed.protocol) &&
      parsed.hostname !== "" &&
      ["", "/"].includes(parsed.pathname) &&
      parsed.search === "" &&
      parsed.hash === "";
    if (!isAddress) return entry;
  }
  return undefined;
}

/**
 * A server URL as it may be logged: its credentials (`user:password@` or `token@`, which NATS URLs may carry)
 * replaced by `[redacted]@`.
 */
export function serverForLog(server: string): string {
  return server.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)?[^/]*@/, "$1[redacted]@");
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/**
 * A NATS connection that is never given up: it connects in the background (a server that is down at start is
 * retried), reconnects forever, and reports `connected`/`disconnected` to listeners. Callers check `connected`
 * instead of waiting, so nothing on a request path blocks on NATS.
 */
export class NatsLink {
  private nc: NatsConnection | undefined;
  private state: LinkState = "connecting";
  private readonly listeners = new Set<(state: LinkState) => void>();
  private readonly firstConnect: Promise<NatsConnection | undefined>;
  private readonly log: BusLogger;

  constructor(private readonly options: NatsLinkOptions) {
    this.log = options.log ?? silentLogger;
    this.firstConnect = this.connectLoop();
  }

  get connection(): NatsConnection | undefined {
    return this.nc;
  }

  get connected(): boolean {
    return this.state === "connected";
  }

  get status(): LinkState {
    return this.state;
  }

  /** Resolves with the connection once connected (undefined if closed first). */
  whenConnected(): Promise<NatsConnection | undefined> {
    if (this.state === "connected" || this.state === "closed") return Promise.resolve(this.nc);
    return new Promise((resolve) => {
      const off = this.onChange((state) => {
        if (state === "connected" || state === "closed") {
          off();
          resolve(this.nc);
        }
      });
    });
  }

  /** Calls `listener` on every state change; returns a function that removes it. */
  onChange(listener: (state: LinkState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private isClosed(): boolean {
    return this.state === "closed";
  }

  private setState(state: LinkState): void {
    if (this.state === state || this.state === "closed") return;
    this.state = state;
    for (const listener of [...this.listeners]) listener(state);
  }

  private async connectLoop(): Promise<NatsConnection | undefined> {
    const servers = this.options.servers.split(",").map((s) => s.trim());
    const wait = this.options.reconnectTimeWaitMs ?? 250;
    let attempts = 0;
    while (!this.isClosed()) {
      try {
        const nc = await connect({
          servers,
          name: this.options.name,
          maxReconnectAttempts: -1,
          reconnectTimeWait: wait,
          reconnectJitter: Math.min(100, wait),
          timeout: 2_000,
          pingInterval: 10_000,
          maxPingOut: 2,
          // No stack captured at every request (each JetStream publish is one): two Error objects per event
          // published otherwise, a few % of the API's CPU when creates are busy. Errors keep their messages.
          noAsyncTraces: true,
          noEcho: this.options.noEcho ?? false,
        });
        if (this.isClosed()) {
          await nc.close();
          return undefined;
        }
        this.nc = nc;
        this.watch(nc);
        this.log.info({ server: nc.getServer() }, "NATS connected");
        this.setState("connected");
        return nc;
      } catch (error) {
        if (attempts === 0)
          this.log.warn(
            { err: error, servers: servers.map(serverForLog) },
            "NATS unreachable; retrying in the background",
          );
        attempts += 1;
        await sleep(wait);
      }
    }
    return undefined;
  }

  private watch(nc: NatsConnection): void {
    void (async () => {
      for await (const status of nc.status()) {
        if (status.type === "disconnect") {
          this.log.warn({ server: status.server }, "NATS disconnected");
          this.setState("disconnected");
        } else if (status.type === "reconnect") {
          this.log.info({ server: status.server }, "NATS reconnected");
          this.setState("connected");
        }
      }
    })().catch(() => {});
    void nc.closed().then(() => this.setState("closed"));
  }

  /** Drains the connection (publishes still buffered are sent), or closes it if the drain takes too long. */
  async close(): Promise<void> {
    const nc = this.nc;
    this.setState("closed");
    if (nc && !nc.isClosed()) {
      let timer: NodeJS.Timeout | undefined;
      const drained = await Promise.race([
        nc.drain().then(
          () => true,
          () => false,
        ),
        new Promise<false>((resolve) => {
          timer = setTimeout(() => resolve(false), this.options.drainTimeoutMs ?? 2_000);
        }),
      ]);
      clearTimeout(timer);
      if (!drained) {
        this.log.warn({}, "NATS did not confirm the drain in time: connection closed without it");
        await nc.close().catch(() => {});
      }
    }
    await this.firstConnect;
  }
}
