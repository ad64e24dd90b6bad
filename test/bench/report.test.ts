import { describe, expect, it } from "vitest";
import { formatRatio, markdownTable } from "../../bench/lib/report";

describe("benchmark table", () => {
  it("cuts ratios to three decimals, so one just under its goal never reads as the goal", () => {
    expect(formatRatio(0.79953)).toBe("0.799");
    expect(formatRatio(0.8)).toBe("0.800");
    expect(formatRatio(1.0372)).toBe("1.037");
    expect(formatRatio(0.4999)).toBe("0.499");
  });

  it("shows a figure's ratio with the cut format and its verdict", () => {
    const table = markdownTable([
      {
        id: "x",
        label: "req/s",
        value: 24_491,
        unit: "req/s",
        baseline: { label: "hello-world", value: 30_633, unit: "req/s" },
        ratio: 24_491 / 30_633,
        goal: "≥ 0.8×",
        pass: false,
        boundBy: "CPU",
      },
    ]);
    expect(table).toContain("| 0.799× | ≥ 0.8× | **no** |");
  });
});
