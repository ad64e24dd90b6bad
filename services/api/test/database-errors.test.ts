import { describe, expect, it } from "vitest";
import { isDatabaseUnavailable } from "../src/database-errors";

describe("which database errors answer 503 (retry) rather than 500 (bug)", () => {
  it.each([
    ["a refused connection", Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" })],
    ["a lost connection", new Error("Connection terminated unexpectedly")],
    ["a statement timeout", Object.assign(new Error("canceling statement"), { code: "57014" })],
    [
      "a session the server ended as idle in transaction (client stalled)",
      Object.assign(new Error("terminating connection due to idle-in-transaction timeout"), { code: "25P03" }),
    ],
    ["an admin shutdown", Object.assign(new Error("terminating connection"), { code: "57P01" })],
    ["a wrapped cause", new Error("query failed", { cause: Object.assign(new Error("x"), { code: "08006" }) })],
  ])("%s is unavailability", (_what, error) => {
    expect(isDatabaseUnavailable(error)).toBe(true);
  });

  it.each([
    ["a unique violation", Object.assign(new Error("duplicate key"), { code: "23505" })],
    ["a syntax error", Object.assign(new Error("syntax error"), { code: "42601" })],
    ["a plain bug", new TypeError("x is undefined")],
    ["not an error at all", "boom"],
  ])("%s is not", (_what, error) => {
    expect(isDatabaseUnavailable(error)).toBe(false);
  });
});
