import { describe, expect, it } from "vitest";
import { newEventId } from "../src/index";

const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const timeOf = (id: string) => Number.parseInt(id.slice(0, 8) + id.slice(9, 13), 16);

describe("newEventId", () => {
  it("is a UUID version 7 whose first 48 bits are the time in milliseconds", () => {
    const now = Date.UTC(2026, 10, 28, 5, 20, 0, 123);
    const id = newEventId(now);
    expect(id).toMatch(UUID_V7);
    expect(timeOf(id)).toBe(now);
    expect(timeOf(newEventId(0))).toBe(0);
    expect(timeOf(newEventId(2 ** 48 - 1))).toBe(2 ** 48 - 1);
    const made = Date.now();
    expect(Math.abs(timeOf(newEventId()) - made)).toBeLessThan(1000);
  });

  it("sorts by time as text (later milliseconds after earlier ones), and never repeats", () => {
    const base = Date.UTC(2026, 0, 1);
    const ids = Array.from({ length: 1000 }, (_, i) => newEventId(base + i * 7));
    expect([...ids].sort()).toEqual(ids);
    const many = new Set(Array.from({ length: 20_000 }, () => newEventId(base)));
    expect(many.size).toBe(20_000);
    for (const id of many) expect(id).toMatch(UUID_V7);
  });
});
