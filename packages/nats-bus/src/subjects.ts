/**
 * Subject naming. Every event goes to `<prefix>.<organization token>.<EventType>`; the stream captures
 * `<prefix>.*.*`. Gateways report key uses on `<prefix>.gateway.reports.key-used`, and the active relay says it has
 * published the whole log on `<prefix>.relay.heartbeat.caught-up`: one token more, so neither is captured by the
 * event stream.
 */

/** Defaults used by the API, the gateway and the AsyncAPI document. */
export const DEFAULT_STREAM_NAME = "KEYLEDGER";
export const DEFAULT_SUBJECT_PREFIX = "keyledger";

const PREFIX_TOKEN = /^[A-Za-z0-9_-]+$/;
const STREAM_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/** Throws unless the prefix is one or more dot-separated tokens of letters, digits, `_` and `-`. */
export function assertSubjectPrefix(prefix: string): string {
  if (prefix.length === 0 || prefix.length > 128 || !prefix.split(".").every((t) => PREFIX_TOKEN.test(t))) {
    throw new RangeError(`invalid subject prefix "${prefix}": dot-separated tokens of [A-Za-z0-9_-]`);
  }
  return prefix;
}

export function assertStreamName(name: string): string {
  if (!STREAM_NAME.test(name)) throw new RangeError(`invalid stream name "${name}": 1-64 characters of [A-Za-z0-9_-]`);
  return name;
}

/**
 * An organization id as one subject token. Ids made of `[A-Za-z0-9_-]` (UUIDs, slugs) are used as they are;
 * any other character is percent-encoded (`.` → `%2E`, `*` → `%2A`, `>` → `%3E`, space → `%20`, `%` → `%25`), so
 * the token never contains a subject separator or wildcard and maps back to exactly one id.
 */
export function organizationToken(organizationId: string): string {
  if (PREFIX_TOKEN.test(organizationId)) return organizationId;
  let token = "";
  for (const byte of new TextEncoder().encode(organizationId)) {
    const c = String.fromCharCode(byte);
    token += byte < 0x80 && /[A-Za-z0-9_-]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return token;
}

/** The subject one event is published on. */
export function eventSubject(prefix: string, organizationId: string, eventType: string): string {
  return `${prefix}.${organizationToken(organizationId)}.${eventType}`;
}

/** The subjects the event stream captures, and that gateways subscribe to. */
export function eventSubjectFilter(prefix: string): string {
  return `${prefix}.*.*`;
}

/** Events of one organization (e.g. to count them in a test or an audit). */
export function organizationSubjectFilter(prefix: string, organizationId: string): string {
  return `${prefix}.${organizationToken(organizationId)}.*`;
}

/** Where gateways publish batches of verified key uses (core NATS, not captured by the stream). */
export function keyUseReportSubject(prefix: string): string {
  return `${prefix}.gateway.reports.key-used`;
}

/**
 * Where the active relay says, on core NATS, that it has published every event committed before its last read of
 * the log. Verifiers trust their caches only while these arrive (`relayHeartbeatTimeoutMs`).
 */
export function relayHeartbeatSubject(prefix: string): string {
  return `${prefix}.relay.heartbeat.caught-up`;
}
