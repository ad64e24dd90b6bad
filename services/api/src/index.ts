export * from "./app";
export * from "./commands/key-commands";
export * from "./config";
export * from "./database";
export * from "./dev-issuer";
export * from "./embedded-database";
export * from "./membership-consumer";
