export * from "./app";
export * from "./commands/key-commands";
export * from "./config";
export * from "./database";
export * from "./embedded-database";
export * from "./membership-consumer";
