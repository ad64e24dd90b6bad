import { createServer } from "node:http";
import { type Dispatcher, Pool } from "undici";

/**
 * The floor under the gateway's proxy figure: a reverse proxy with no code of its own, on the gateway's
 * transport (node:http in front, an undici pool of the same size behind, streaming through undici's handler
 * interface). It checks nothing and adds no header; it forwards every request to `UPSTREAM_URL` (without a body: the
 * benchmark sends GETs) and streams the answer back. `GET /health/live` is its own.
 */
const upstream = new Pool(new URL(process.env.UPSTREAM_URL ?? "http://127.0.0.1:1").origin, {
  connections: 128,
  pipelining: 1,
  keepAliveTimeout: 30_000,
});

const server = createServer((req, res) => {
  if (req.url === "/health/live") {
    res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
    return;
  }
  let resume = () => {};
  const handler: Dispatcher.DispatchHandler = {
    onConnect() {},
    onHeaders(statusCode, rawHeaders, resumeUpstream, statusText) {
      resume = resumeUpstream;
      const headers: string[] = [];
      for (let i = 0; i < rawHeaders.length; i += 2) {
        const name = (rawHeaders[i] as Buffer).toString("latin1");
        const lower = name.toLowerCase();
        if (lower === "connection" || lower === "keep-alive" || lower === "transfer-encoding") continue;
        headers.push(name, (rawHeaders[i + 1] as Buffer).toString("latin1"));
      }
      res.writeHead(statusCode, statusText || undefined, headers);
      return true;
    },
    onData(chunk) {
      if (res.write(chunk)) return true;
      res.once("drain", resume);
      return false;
    },
    onComplete() {
      res.end();
    },
    onError() {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    },
  };
  const headers: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const lower = (req.rawHeaders[i] as string).toLowerCase();
    if (lower === "connection" || lower === "keep-alive" || lower === "host") continue;
    headers.push(req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string);
  }
  upstream.dispatch(
    { path: req.url ?? "/", method: req.method as Dispatcher.HttpMethod, headers, body: null },
    handler,
  );
});
server.keepAliveTimeout = 72_000;
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1");
// Nothing to finish: it holds no state (waiting for the pool to close gracefully could outlast the runner's grace).
process.on("SIGTERM", () => process.exit(0));
