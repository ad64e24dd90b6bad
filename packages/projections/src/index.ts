export * from "./notifications";
export * from "./projection-registry";
export * from "./projector";
export * from "./read-model-projection";
export * from "./rebuild";
export * from "./replay";
export type * from "./schema";
