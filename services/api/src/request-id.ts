import { randomUUID } from "node:crypto";
import { containsSecret } from "@keyledger/domain";

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * A request's id: the caller's `X-Request-Id` when it is a plain token of at most 128 characters and not a key or a
 * JWT (the id is logged, echoed and stored in the event log), else a new UUID.
 */
export function requestIdFor(given: string | string[] | undefined): string {
  return typeof given === "string" && REQUEST_ID.test(given) && !containsSecret(given) ? given : randomUUID();
}
