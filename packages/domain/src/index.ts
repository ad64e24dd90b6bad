export * from "./api-key";
export * from "./date-time";
export * from "./errors";
export * from "./events";
export * from "./key-format";
export * from "./member";
export * from "./permissions";
export * from "./secret-text";
