import { Histogram, type Metric, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { LatencyHistogram } from "../src/latency-histogram";

const NAME = "test_request_duration_seconds";
const HELP = "request latency";
const LABELS = ["method", "route", "status_code"] as const;
const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

function both() {
  const reference = new Registry();
  const promHistogram = new Histogram({
    name: NAME,
    help: HELP,
    labelNames: LABELS,
    buckets: BUCKETS,
    registers: [reference],
  });
  const ours = new Registry();
  const latency = new LatencyHistogram(NAME, HELP, LABELS, BUCKETS);
  ours.registerMetric(latency as unknown as Metric);
  return { reference, promHistogram, ours, latency };
}

describe("LatencyHistogram", () => {
  it("exports exactly what prom-client's Histogram exports for the same observations", async () => {
    const { reference, promHistogram, ours, latency } = both();
    const series = [
      { method: "GET", route: "/api/api-keys/current", status_code: "200" },
      { method: "GET", route: "/api/api-keys/current", status_code: "401" },
      { method: "POST", route: "/api/api-keys", status_code: "201" },
      { method: "GET", route: 'un"usual\\route\n', status_code: "404" },
    ];
    // On every bound, between bounds, below the first, above the last, and zero.
    const values = [0, 0.0005, 0.001, 0.0010001, 0.0025, 0.003, 0.05, 0.7, 1, 2.5, 4.99, 5, 5.01, 120];
    series.forEach((labels, s) => {
      const bound = latency.series(labels);
      for (const [i, value] of values.entries()) {
        if ((i + s) % (s + 1) !== 0) continue; // a different subset per series
        bound.observe(value);
        promHistogram.observe(labels, value);
      }
    });
    const expected = await reference.metrics();
    expect(expected).toContain('le="+Inf"');
    expect(await ours.metrics()).toBe(expected);

    ours.resetMetrics();
    reference.resetMetrics();
    expect(await ours.metrics()).not.toContain("_count{");
    // Series bound before the reset go on counting.
    latency.series(series[0] as (typeof series)[0]).observe(0.002);
    promHistogram.observe(series[0] as (typeof series)[0], 0.002);
    expect(await ours.metrics()).toBe(await reference.metrics());
  });

  it("binds one series per label set and refuses labels it does not have", () => {
    const { latency } = both();
    const a = latency.series({ method: "GET", route: "/x", status_code: "200" });
    expect(latency.series({ status_code: "200", route: "/x", method: "GET" })).toBe(a);
    expect(() => latency.series({ method: "GET", route: "/x" })).toThrow(RangeError);
    expect(() => latency.series({ method: "GET", route: "/x", status_code: "200", extra: "1" })).toThrow(RangeError);
    expect(() => new LatencyHistogram(NAME, HELP, LABELS, [])).toThrow(RangeError);
  });
});
