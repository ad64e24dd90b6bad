import type { FastifyBaseLogger } from "fastify";
import type { KeyCommands } from "./commands/key-commands";
import type { ApiKeyRow } from "./read-model-queries";

/**
 * Records successful API-key uses as `KeyUsed`, off the request path, at most once per key per throttle window.
 * The domain decides the throttle (so replicas agree); this only avoids asking when the answer is known.
 */
export class KeyUsageRecorder {
  private readonly inFlight = new Map<string, Promise<void>>();

  constructor(
    private readonly commands: KeyCommands,
    private readonly throttleMs: number,
    private readonly log: FastifyBaseLogger,
  ) {}

  record(key: ApiKeyRow, requestId: string | null): void {
    const now = new Date();
    if (key.last_used_at !== null && now.getTime() - key.last_used_at.getTime() < this.throttleMs) return;
    if (this.inFlight.has(key.key_id)) return;
    const pending = this.commands
      .recordKeyUse({ organizationId: key.organization_id, userId: key.user_id, name: key.name }, this.throttleMs, {
        now,
        metadata: { actorUserId: key.user_id, organizationId: key.organization_id, authMethod: "api_key", requestId },
      })
      .then(
        () => undefined,
        (error: unknown) =>
          this.log.warn({ err: error, keyId: key.key_id, reqId: requestId }, "could not record key use"),
      )
      .finally(() => this.inFlight.delete(key.key_id));
    this.inFlight.set(key.key_id, pending);
  }

  /** Waits for every pending `KeyUsed` append (used on shutdown). */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.inFlight.values()]);
  }
}
