import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";

/** The Daytona API-keys contract, kept beside the repository (`../shared/spec`). */
export const CONTRACT_PATH = fileURLToPath(new URL("../../../shared/spec/api-keys.openapi.yaml", import.meta.url));

// biome-ignore lint/suspicious/noExplicitAny: an OpenAPI document is walked dynamically
export type OpenApiDocument = Record<string, any>;

let cached: OpenApiDocument | undefined;

/** The contract parsed from YAML (anchors and aliases resolved). */
export function loadContract(): OpenApiDocument {
  cached ??= parse(readFileSync(CONTRACT_PATH, "utf8")) as OpenApiDocument;
  return cached;
}

/** The values of the contract's `Permission` enum, in its order. */
export function contractPermissions(): string[] {
  return [...(loadContract().components.schemas.Permission.enum as string[])];
}
