import { describe, expect, it } from "vitest";
import { UsageError } from "../src/command";
import { apiUrl } from "../src/commands/dev-token";

describe("dev-token: which API it asks", () => {
  it("is --api-url, else KEYLEDGER_API_URL, else 127.0.0.1 on PORT (3000)", () => {
    expect(apiUrl({ "api-url": "http://a:1/" }, { KEYLEDGER_API_URL: "http://b:2" })).toBe("http://a:1");
    expect(apiUrl({}, { KEYLEDGER_API_URL: "https://b:2", PORT: "4000" })).toBe("https://b:2");
    expect(apiUrl({}, { PORT: "4000" })).toBe("http://127.0.0.1:4000");
    expect(apiUrl({}, {})).toBe("http://127.0.0.1:3000");
  });

  it("names the setting a bad value came from, not always --api-url", () => {
    expect(() => apiUrl({}, { KEYLEDGER_API_URL: "not a url" })).toThrow(
      /^KEYLEDGER_API_URL "not a url" is not a URL$/,
    );
    expect(() => apiUrl({}, { PORT: "abc" })).toThrow(/^PORT must be a port number, got "abc"$/);
    expect(() => apiUrl({ "api-url": "nope" }, {})).toThrow(/^--api-url "nope" is not a URL$/);
  });

  it("refuses a URL that is not http(s): localhost:3000 is the scheme 'localhost:', and fetch says no API answers", () => {
    expect(() => apiUrl({}, { KEYLEDGER_API_URL: "localhost:3000" })).toThrow(UsageError);
    expect(() => apiUrl({}, { KEYLEDGER_API_URL: "localhost:3000" })).toThrow(
      /^KEYLEDGER_API_URL must be an http\(s\) URL such as http:\/\/127.0.0.1:3000, got "localhost:3000"$/,
    );
  });
});
