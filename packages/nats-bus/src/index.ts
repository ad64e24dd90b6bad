export * from "./connection";
export * from "./key-use-reports";
export * from "./publisher";
export * from "./relay";
export * from "./stream";
export * from "./subjects";
export * from "./wire";
