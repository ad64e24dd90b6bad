import { connect, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP proxy the test controls, to put faults between a service and a dependency (Postgres, NATS) without
 * touching the shared servers:
 * - `cut()`: resets every open connection and refuses new ones at once (the server went away);
 * - `stall()`: keeps connections open but moves no bytes, new ones included (a network partition: nothing
 *   answers, nothing fails fast); bytes written meanwhile are held, as TCP would, and flow on `restore()`;
 * - `restore()`: back to forwarding.
 */
export class TcpProxy {
  private server: Server | undefined;
  private mode: "forward" | "cut" | "stall" = "forward";
  private readonly pairs = new Set<{ client: Socket; upstream: Socket | undefined }>();
  private readonly held = new Set<() => void>();

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  /** A started proxy to the Postgres server of `databaseUrl`, and the same URL through the proxy. */
  static async inFrontOfDatabase(databaseUrl: string): Promise<{ proxy: TcpProxy; url: string }> {
    const url = new URL(databaseUrl);
    const proxy = new TcpProxy(url.hostname, Number(url.port || 5432));
    url.hostname = "127.0.0.1";
    url.port = String(await proxy.start());
    return { proxy, url: url.toString() };
  }

  /** Listens on a free local port; returns it. */
  async start(): Promise<number> {
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    const address = this.server.address();
    if (address === null || typeof address === "string") throw new Error("proxy has no port");
    return address.port;
  }

  get openConnections(): number {
    return this.pairs.size;
  }

  private accept(client: Socket) {
    if (this.mode === "cut") {
      client.resetAndDestroy();
      return;
    }
    const pair: { client: Socket; upstream: Socket | undefined } = { client, upstream: undefined };
    this.pairs.add(pair);
    const drop = () => {
      pair.client.destroy();
      pair.upstream?.destroy();
      this.pairs.delete(pair);
    };
    client.on("error", drop);
    client.on("close", drop);
    const open = () => {
      const upstream = connect(this.targetPort, this.targetHost);
      pair.upstream = upstream;
      upstream.on("error", drop);
      upstream.on("close", drop);
      this.pipe(client, upstream);
      this.pipe(upstream, client);
    };
    if (this.mode === "stall") {
      client.pause();
      this.held.add(open);
    } else {
      open();
    }
  }

  /** Copies bytes one way, holding them while the proxy stalls. */
  private pipe(from: Socket, to: Socket) {
    from.on("data", (chunk) => {
      if (this.mode === "stall") {
        from.pause();
        const release = () => {
          if (!to.destroyed) to.write(chunk);
          from.resume();
        };
        this.held.add(release);
        return;
      }
      if (!to.destroyed) to.write(chunk);
    });
  }

  cut() {
    this.mode = "cut";
    this.held.clear();
    for (const pair of this.pairs) {
      pair.client.resetAndDestroy();
      pair.upstream?.destroy();
    }
    this.pairs.clear();
  }

  stall() {
    this.mode = "stall";
    for (const pair of this.pairs) {
      pair.client.pause();
      pair.upstream?.pause();
    }
  }

  restore() {
    this.mode = "forward";
    const held = [...this.held];
    this.held.clear();
    for (const release of held) release();
    for (const pair of this.pairs) {
      pair.client.resume();
      pair.upstream?.resume();
    }
  }

  async close() {
    this.cut();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
