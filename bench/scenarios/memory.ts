import { setTimeout as sleep } from "node:timers/promises";
import type autocannon from "autocannon";
import { startBenchEnvironment } from "../lib/environment";
import { assertClean, load } from "../lib/load";
import type { Figure } from "../lib/report";
import { type Scenario, size } from "../lib/scenario";
import { profileFlags } from "./current-key";

const MB = 1024 * 1024;
const KEYS = 100;
/** RSS may move this much between two samples without it being a leak (GC heap sizing, allocator). */
const GROWTH_TOLERANCE_MB = 10;

/**
 * API resident memory after 1,000,000 requests (three phases of 500,000: the figure is the RSS after the second,
 * the growth is the third phase's). The mix, per connection and cycle of 10: 8 × `/current` with one of 100 keys,
 * 1 × `GET /api/api-keys/:name` with a JWT, 1 × `/current` with a malformed key (401).
 */
export const memoryScenario: Scenario = {
  id: "memory",
  title: "API resident memory after 1,000,000 requests; growth in the third half-million",
  async run(context) {
    const perPhase = size(context, 500_000, 3_000);
    const connections = 32;
    const env = await startBenchEnvironment(context, "memory", { nodeFlags: profileFlags(context, "memory") });
    const { api, client } = env;
    try {
      await client.setMember("org-memory", "owner", "owner");
      const jwt = await client.jwtHeaders("owner", "org-memory");
      const values: string[] = [];
      const keys = size(context, KEYS, 20);
      for (let i = 0; i < keys; i += 10) {
        const batch = Array.from({ length: 10 }, (_, j) => client.createKey(jwt, `key-${i + j}`));
        values.push(...(await Promise.all(batch)));
      }
      let next = 0;
      const current: autocannon.Request = {
        method: "GET",
        path: "/api/api-keys/current",
        setupRequest: (request) => ({
          ...request,
          headers: { authorization: `Bearer ${values[next++ % values.length]}` },
        }),
      };
      const requests: autocannon.Request[] = [
        ...Array.from({ length: 8 }, () => current),
        { method: "GET", path: "/api/api-keys/key-3", headers: jwt },
        { method: "GET", path: "/api/api-keys/current", headers: { authorization: `Bearer dtn_${"0".repeat(64)}` } },
      ];
      const phase = async (amount: number) => {
        const result = await load({ url: api.baseUrl, connections, amount, requests });
        // One request in ten is the malformed key: 401 by design.
        assertClean("memory mix", result, Math.ceil(amount / 10) + connections);
        await sleep(size(context, 1000, 300));
        return { result, rss: await api.service.rss() };
      };
      context.log("warm-up");
      const warm = await phase(size(context, 20_000, 1000));
      const rss: number[] = [];
      let requestsPerSecond = 0;
      for (let i = 1; i <= 3; i++) {
        const { result, rss: after } = await phase(perPhase);
        rss.push(after);
        requestsPerSecond = result.okPerSecond + result.non2xx / result.seconds;
        context.log(
          `after ${i * perPhase} requests: RSS ${(after / MB).toFixed(1)} MB (${requestsPerSecond.toFixed(0)}/s)`,
        );
      }
      const [first = 0, second = 0, third = 0] = rss.map((r) => r / MB);
      const growth = third - second;
      const figures: Figure[] = [
        {
          id: "memory-rss",
          label: `API RSS after ${(2 * perPhase).toLocaleString("en-US")} requests`,
          value: second,
          unit: "MB",
          goal: "≤ 200 MB",
          pass: second <= 200,
          boundBy: "loaded code: about 75 MB for node + tsx (its loader thread), 75 MB for the API's modules; heap",
          details: {
            rssAfterWarmUpMb: warm.rss / MB,
            rssAfterFirstPhaseMb: first,
            rssAfterSecondPhaseMb: second,
            rssAfterThirdPhaseMb: third,
            requestsPerPhase: perPhase,
            requestsPerSecond: Math.round(requestsPerSecond),
          },
        },
        {
          id: "memory-growth",
          label: `API RSS growth over the third ${perPhase.toLocaleString("en-US")} requests`,
          value: growth,
          unit: "MB",
          goal: `none (≤ ${GROWTH_TOLERANCE_MB} MB noise)`,
          pass: growth <= GROWTH_TOLERANCE_MB,
          boundBy: "caches are bounded (verifier entries, rate-limit windows)",
        },
      ];
      return figures;
    } finally {
      await env.close();
    }
  },
};
