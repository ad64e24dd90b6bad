import { describe, expect, it } from "vitest";
import { FixedWindowCounter } from "../src/plugins/app/rate-limits";

describe("FixedWindowCounter", () => {
  it("counts hits in a window started by the first hit, then starts a new one", () => {
    const counter = new FixedWindowCounter(2, 10_000);
    expect(counter.hit("a", 1_000, false)).toEqual({ limit: 2, remaining: 2, resetSeconds: 10, exceeded: false });
    expect(counter.size).toBe(0);
    expect(counter.hit("a", 1_000)).toEqual({ limit: 2, remaining: 1, resetSeconds: 10, exceeded: false });
    expect(counter.hit("a", 5_500)).toEqual({ limit: 2, remaining: 0, resetSeconds: 6, exceeded: false });
    expect(counter.hit("a", 5_600, false)).toMatchObject({ remaining: 0, exceeded: false });
    expect(counter.hit("a", 6_000)).toEqual({ limit: 2, remaining: 0, resetSeconds: 5, exceeded: true });
    expect(counter.hit("b", 6_000)).toMatchObject({ remaining: 1 });
    expect(counter.hit("a", 11_000)).toEqual({ limit: 2, remaining: 1, resetSeconds: 10, exceeded: false });
  });

  it("says whether a key's window is used up, as hit(key, now, false).remaining === 0 does", () => {
    const counter = new FixedWindowCounter(2, 10_000);
    expect(counter.isExhausted("a", 1_000)).toBe(false); // no window
    counter.hit("a", 1_000);
    expect(counter.isExhausted("a", 2_000)).toBe(false); // one left
    counter.hit("a", 2_000);
    expect(counter.isExhausted("a", 3_000)).toBe(true);
    expect(counter.hit("a", 3_000, false).remaining).toBe(0);
    expect(counter.isExhausted("a", 11_000)).toBe(false); // the window ended
    expect(counter.hit("a", 11_000, false).remaining).toBe(2);
    expect(counter.isExhausted("b", 3_000)).toBe(false);
  });

  it("says whether any window may be live: from the first hit until the last window started ends", () => {
    const counter = new FixedWindowCounter(2, 10_000);
    expect(counter.hasLiveWindows(0)).toBe(false);
    counter.hit("a", 0, false); // a look, no window
    expect(counter.hasLiveWindows(0)).toBe(false);
    counter.hit("a", 1_000);
    counter.hit("b", 4_000);
    expect(counter.hasLiveWindows(12_000)).toBe(true); // b's window ends at 14,000
    expect(counter.hasLiveWindows(14_000)).toBe(false);
    counter.hit("a", 20_000);
    expect(counter.hasLiveWindows(29_999)).toBe(true);
    expect(counter.hasLiveWindows(30_000)).toBe(false);
  });

  it("holds at most maxKeys windows: ended ones are swept first, then the oldest", () => {
    const counter = new FixedWindowCounter(5, 1_000, 3);
    counter.hit("old", 0);
    counter.hit("x", 500);
    counter.hit("y", 600);
    counter.hit("z", 1_200); // "old" ended at 1,000: swept
    expect(counter.size).toBe(3);
    expect(counter.hit("x", 1_300, false)).toMatchObject({ remaining: 4 });
    counter.hit("w", 1_300); // none ended: the oldest ("x") goes
    expect(counter.size).toBe(3);
    expect(counter.hit("x", 1_301, false)).toMatchObject({ remaining: 5 });
    expect(counter.hit("y", 1_301, false)).toMatchObject({ remaining: 4 });
  });
});
