/** One labelled series of a `LatencyHistogram`: observing is a bucket search and three additions. */
export type LatencySeries = { observe(seconds: number): void };

type Series = LatencySeries & {
  readonly labels: Readonly<Record<string, string>>;
  /** Observations per bucket (not cumulative); the last slot counts those above every bound. */
  readonly counts: Float64Array;
  sum: number;
  count: number;
};

type ExportedValue = { metricName: string; labels: Record<string, string | number>; value: number };

/**
 * A Prometheus histogram for request latencies, registered on a prom-client `Registry` like its own metrics (it has
 * the `name`, `help`, `type`, `get()` and `reset()` the registry uses) and exported in the same text as prom-client's
 * `Histogram`. The difference is the cost of an observation: series are bound once per label set (`series()`), and
 * observing one only counts into plain numbers, while prom-client's labelled `observe` converts, validates and
 * hashes the labels on every call (about 3 µs of the 57 µs a cached `GET /api/api-keys/current` cost in a profile;
 * BENCHMARKS.md). Labels are formatted only when the registry is scraped.
 */
export class LatencyHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";
  private readonly bounds: Float64Array;
  private readonly byLabels = new Map<string, Series>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly labelNames: readonly string[],
    buckets: readonly number[],
  ) {
    const sorted = [...buckets].sort((a, b) => a - b);
    if (sorted.length === 0 || sorted.some((b, i) => !Number.isFinite(b) || (i > 0 && b === sorted[i - 1]))) {
      throw new RangeError(`${name}: buckets must be distinct finite numbers`);
    }
    this.bounds = Float64Array.from(sorted);
  }

  /** The series with these labels (every label name given, nothing else), created at its first use. */
  series(labels: Readonly<Record<string, string>>): LatencySeries {
    const names = Object.keys(labels);
    if (names.length !== this.labelNames.length || !this.labelNames.every((n) => typeof labels[n] === "string")) {
      throw new RangeError(`${this.name}: labels must be exactly ${this.labelNames.join(", ")}`);
    }
    const id = this.labelNames.map((n) => labels[n]).join("\u0000");
    let series = this.byLabels.get(id);
    if (series === undefined) {
      const bounds = this.bounds;
      const created: Series = {
        labels: Object.fromEntries(this.labelNames.map((n) => [n, labels[n] as string])),
        counts: new Float64Array(bounds.length + 1),
        sum: 0,
        count: 0,
        observe(seconds: number) {
          if (!Number.isFinite(seconds)) return; // prom-client throws; a latency is always finite
          let i = 0;
          while (i < bounds.length && seconds > (bounds[i] as number)) i++;
          (created.counts[i] as number) += 1;
          created.sum += seconds;
          created.count += 1;
        },
      };
      series = created;
      this.byLabels.set(id, series);
    }
    return series;
  }

  /** What prom-client's `Histogram.get()` returns for the same observations (cumulative buckets, `+Inf`, sum, count). */
  async get(): Promise<{ name: string; help: string; type: "histogram"; aggregator: "sum"; values: ExportedValue[] }> {
    const values: ExportedValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const series of this.byLabels.values()) {
      // As prom-client does: a series appears once observed (since the last reset).
      if (series.count === 0) continue;
      let cumulative = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        cumulative += series.counts[i] as number;
        values.push({
          metricName: bucket,
          labels: { le: this.bounds[i] as number, ...series.labels },
          value: cumulative,
        });
      }
      values.push({ metricName: bucket, labels: { le: "+Inf", ...series.labels }, value: series.count });
      values.push({ metricName: `${this.name}_sum`, labels: { ...series.labels }, value: series.sum });
      values.push({ metricName: `${this.name}_count`, labels: { ...series.labels }, value: series.count });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** Zeroes every series (the registry's `resetMetrics`); series bound earlier go on counting from zero. */
  reset(): void {
    for (const series of this.byLabels.values()) {
      series.counts.fill(0);
      series.sum = 0;
      series.count = 0;
    }
  }
}
