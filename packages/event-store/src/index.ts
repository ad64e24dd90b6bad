export * from "./append-notifier";
export * from "./event-id";
export * from "./event-store";
export * from "./migrate";
export type * from "./schema";
