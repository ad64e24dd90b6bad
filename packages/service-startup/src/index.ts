export * from "./listen-probe";
export * from "./log-level";
