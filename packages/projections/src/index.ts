export * from "./read-model-projection";
export type * from "./schema";
