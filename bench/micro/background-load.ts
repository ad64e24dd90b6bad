/**
 * Background verify load in its own process: autocannon against each URL in `BENCH_TARGETS` (JSON array of
 * `{ url, keys }`) at `BENCH_RATE` requests/s per target, each request with the next of the target's keys, until
 * SIGTERM. Prints `{ ok, non2xx, errors }` per target when stopped.
 */
import autocannon from "autocannon";

type Target = { url: string; keys: string[] };
const targets = JSON.parse(process.env.BENCH_TARGETS ?? "[]") as Target[];
const rate = Number(process.env.BENCH_RATE ?? 1000);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);

const instances = targets.map((target) => {
  let next = 0;
  return autocannon({
    url: target.url,
    connections,
    overallRate: rate,
    duration: 3600,
    requests: [
      {
        method: "GET",
        setupRequest: (request) => ({
          ...request,
          headers: { authorization: `Bearer ${target.keys[next++ % target.keys.length]}` },
        }),
      },
    ],
  }) as unknown as autocannon.Instance & Promise<autocannon.Result>;
});

process.on("SIGTERM", async () => {
  for (const instance of instances) instance.stop();
  const results = await Promise.all(instances);
  process.stdout.write(
    `${JSON.stringify(results.map((r) => ({ ok: r["2xx"], non2xx: r.non2xx, errors: r.errors })))}\n`,
  );
  process.exit(0);
});
