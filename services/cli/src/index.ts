export * from "./cli";
export * from "./command";
export { COMMANDS } from "./commands/index";
