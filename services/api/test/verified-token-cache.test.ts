import { describe, expect, it } from "vitest";
import { VerifiedTokenCache } from "../src/plugins/app/authentication";

describe("VerifiedTokenCache", () => {
  it("answers until the token's exp or the ttl, whichever comes first", () => {
    const cache = new VerifiedTokenCache(10, 60_000);
    cache.set("short", "user-1", 5_000, 0);
    cache.set("long", "user-2", 1_000_000, 0);
    cache.set("no-exp", "user-3", undefined, 0);
    expect(cache.get("short", 4_999)).toBe("user-1");
    expect(cache.get("short", 5_000)).toBeUndefined();
    expect(cache.get("long", 59_999)).toBe("user-2");
    expect(cache.get("long", 60_000)).toBeUndefined();
    expect(cache.get("no-exp", 60_000)).toBeUndefined();
  });

  it("does not keep a token that has already expired", () => {
    const cache = new VerifiedTokenCache(10, 60_000);
    cache.set("expired", "user-1", 1_000, 2_000);
    expect(cache.get("expired", 2_000)).toBeUndefined();
  });

  it("holds at most maxEntries, dropping the oldest", () => {
    const cache = new VerifiedTokenCache(2, 60_000);
    cache.set("a", "user-a", undefined, 0);
    cache.set("b", "user-b", undefined, 0);
    cache.set("c", "user-c", undefined, 0);
    expect(cache.get("a", 1)).toBeUndefined();
    expect(cache.get("b", 1)).toBe("user-b");
    expect(cache.get("c", 1)).toBe("user-c");
  });
});
