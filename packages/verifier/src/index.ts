export * from "./api-lookup";
export * from "./types";
export * from "./verifier";
