import { afterEach, describe, expect, it } from "vitest";
import { parseIsoDateTime } from "../src/date-time";

describe("parseIsoDateTime", () => {
  const zone = process.env.TZ;
  afterEach(() => {
    if (zone === undefined) delete process.env.TZ;
    else process.env.TZ = zone;
  });

  it("refuses fields that are not real instead of rolling them over", () => {
    for (const text of [
      "2026-02-30",
      "2026-02-29",
      "2026-02-29T00:00:00Z",
      "2026-04-31T12:00:00Z",
      "2026-13-01",
      "2026-00-10",
      "2026-01-00",
      "2026-01-01T24:00:00Z",
      "2026-01-01T23:60:00Z",
      "2026-01-01T23:59:60Z",
      "2026-01-01T10:00:00+24:00",
      "2026-01-01T10:00:00+05:60",
      "tomorrow",
      "",
      "2026-01-01 10:00:00Z",
      "2026-01-01Z",
      "2026-1-1",
    ]) {
      expect(parseIsoDateTime(text), text).toBeUndefined();
    }
  });

  it("reads real dates and date-times, with or without seconds, fraction and offset", () => {
    expect(parseIsoDateTime("2024-02-29")?.toISOString()).toBe("2024-02-29T00:00:00.000Z");
    expect(parseIsoDateTime("2000-02-29T12:00Z")?.toISOString()).toBe("2000-02-29T12:00:00.000Z");
    expect(parseIsoDateTime("2026-04-30T23:59:59.999Z")?.toISOString()).toBe("2026-04-30T23:59:59.999Z");
    expect(parseIsoDateTime("2026-01-01T10:00:00.123456789Z")?.toISOString()).toBe("2026-01-01T10:00:00.123Z");
    expect(parseIsoDateTime("2026-01-01T10:00+0530")?.toISOString()).toBe("2026-01-01T04:30:00.000Z");
    expect(parseIsoDateTime("2026-01-01T00:30:00-01:00")?.toISOString()).toBe("2026-01-01T01:30:00.000Z");
  });

  it("reads a time without a zone as local by default, as UTC when asked; a date alone as midnight UTC", () => {
    process.env.TZ = "Pacific/Kiritimati"; // UTC+14
    expect(parseIsoDateTime("2026-01-02T00:00:00")?.toISOString()).toBe("2026-01-01T10:00:00.000Z");
    expect(parseIsoDateTime("2026-01-02T00:00:00", { zoneless: "utc" })?.toISOString()).toBe(
      "2026-01-02T00:00:00.000Z",
    );
    expect(parseIsoDateTime("2026-01-02T00:00+01:00", { zoneless: "utc" })?.toISOString()).toBe(
      "2026-01-01T23:00:00.000Z",
    );
    expect(parseIsoDateTime("2026-01-02")?.toISOString()).toBe("2026-01-02T00:00:00.000Z");
    expect(parseIsoDateTime("2026-01-02", { zoneless: "utc" })?.toISOString()).toBe("2026-01-02T00:00:00.000Z");
  });
});
