import { type ChildService, freePort, spawnTs, waitForHttp } from "./processes";

export type GatewayProcess = { service: ChildService; baseUrl: string; stop(): Promise<void> };

/** `services/gateway/src/main.ts` in its own process, ready once its verifier is subscribed to the key events. */
export async function startGatewayProcess(options: {
  name: string;
  /** Unset for a gateway in forward-auth mode (`env: { GATEWAY_MODE: "forward-auth" }`). */
  upstreamUrl?: string;
  apiUrl: string;
  natsUrl: string;
  subjectPrefix: string;
  nodeFlags?: string[];
  env?: Record<string, string>;
}): Promise<GatewayProcess> {
  const port = await freePort();
  const service = spawnTs({
    name: options.name,
    script: "services/gateway/src/main.ts",
    nodeFlags: options.nodeFlags,
    env: {
      NODE_ENV: "production",
      PORT: String(port),
      HOST: "127.0.0.1",
      ...(options.upstreamUrl === undefined ? {} : { UPSTREAM_URL: options.upstreamUrl }),
      API_URL: options.apiUrl,
      NATS_URL: options.natsUrl,
      NATS_SUBJECT_PREFIX: options.subjectPrefix,
      LOG_LEVEL: "warn",
      ...options.env,
    },
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  try {
    await waitForHttp(service, `${baseUrl}/health/ready`, { timeoutMs: 60_000 });
  } catch (error) {
    await service.stop(1000);
    throw error;
  }
  return { service, baseUrl, stop: () => service.stop() };
}
