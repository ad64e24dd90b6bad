import { connect, type Socket } from "node:net";

export type ProbeResult = {
  status: number;
  /** When the request was written (performance.now()). */
  sentAt: number;
  /** When the first bytes of its response arrived (performance.now()). */
  at: number;
};

/**
 * GET requests one at a time over one keep-alive connection, for measuring *when* an answer changes (a key's
 * revocation reaching a gateway): the request is written as prepared bytes, and a response is timestamped when its
 * first bytes arrive. node:http's client costs this process about as much CPU per request as the server it probes,
 * and timestamps after parsing the whole response; on 2 cores shared with every process under measurement, that
 * CPU delays the very wake-ups being measured. Responses must carry `content-length` (the gateway's and
 * hello-world's do); anything else is an error, as is a connection that closes.
 */
export class HttpProbe {
  private socket: Socket | undefined;
  private received = "";
  private firstBytesAt = 0;
  private pending:
    | { resolve: (result: ProbeResult) => void; reject: (error: Error) => void; sentAt: number }
    | undefined;

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly path: string,
  ) {}

  static forUrl(url: string): HttpProbe {
    const parsed = new URL(url);
    return new HttpProbe(parsed.hostname, Number(parsed.port), `${parsed.pathname}${parsed.search}`);
  }

  /** One GET with `Authorization: Bearer <key>`; resolves with the status and when the response began to arrive. */
  async get(key: string): Promise<ProbeResult> {
    if (this.pending) throw new Error("one probe at a time");
    const socket = this.socket ?? (await this.connect());
    const request = `GET ${this.path} HTTP/1.1\r\nhost: ${this.host}:${this.port}\r\nauthorization: Bearer ${key}\r\n\r\n`;
    return new Promise((resolve, reject) => {
      const sentAt = performance.now();
      this.pending = { resolve, reject, sentAt };
      socket.write(request);
    });
  }

  close(): void {
    this.socket?.destroy();
    this.socket = undefined;
  }

  private connect(): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: this.host, port: this.port, noDelay: true });
      socket.setEncoding("latin1");
      socket.once("connect", () => {
        socket.off("error", reject);
        this.socket = socket;
        resolve(socket);
      });
      socket.once("error", reject);
      socket.on("data", (chunk: string) => this.onData(chunk));
      socket.on("error", (error) => this.fail(error));
      socket.on("close", () => this.fail(new Error(`probe connection to ${this.host}:${this.port} closed`)));
    });
  }

  private onData(chunk: string): void {
    if (this.received === "") this.firstBytesAt = performance.now();
    this.received += chunk;
    const headEnd = this.received.indexOf("\r\n\r\n");
    if (headEnd < 0) return;
    const head = this.received.slice(0, headEnd);
    const length = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (length === null) {
      this.fail(new Error(`probe response without content-length: ${head.split("\r\n")[0]}`));
      return;
    }
    const total = headEnd + 4 + Number(length[1]);
    if (this.received.length < total) return;
    if (this.received.length > total) {
      this.fail(new Error("probe received bytes after its response"));
      return;
    }
    const status = Number(head.slice(9, 12));
    const pending = this.pending;
    this.received = "";
    this.pending = undefined;
    pending?.resolve({ status, sentAt: pending.sentAt, at: this.firstBytesAt });
  }

  private fail(error: Error): void {
    const pending = this.pending;
    this.pending = undefined;
    this.received = "";
    this.socket?.destroy();
    this.socket = undefined;
    pending?.reject(error);
  }
}
