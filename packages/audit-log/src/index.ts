export * from "./canonical-json";
export * from "./event-hash";
export * from "./sealed-events";
export * from "./sealer";
export * from "./verify-log";
