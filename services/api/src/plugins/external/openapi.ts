import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

/**
 * OpenAPI 3.1 generated from the route schemas. Paths are written relative to the `/api` server, as in the
 * Daytona contract; served as JSON at `/api/docs-json` and as Swagger UI at `/api/docs`.
 */
export default fp(
  async (app: FastifyInstance) => {
    await app.register(swagger, {
      openapi: {
        openapi: "3.1.0",
        info: {
          title: "Daytona Api Keys API",
          description: "keyledger: Daytona-compatible, event-sourced API keys.",
          version: "1.0",
          license: { name: "Apache-2.0", url: "https://www.apache.org/licenses/LICENSE-2.0" },
        },
        servers: [{ url: "/api" }],
        tags: [{ name: "api-keys" }],
        components: {
          securitySchemes: {
            bearer: { type: "http", scheme: "bearer", bearerFormat: "JWT", description: "API Key access" },
            oauth2: {
              type: "openIdConnect",
              openIdConnectUrl: "http://localhost:3000/.well-known/openid-configuration",
            },
          },
        },
      },
      refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`) },
      // Only the /api routes are the contract. @fastify/swagger itself writes their paths relative to the `/api`
      // server (stripBasePath), so filtering the finished document by an `/api/` prefix would drop them all.
      transform: ({ schema, url }) => ({ schema: url.startsWith("/api/") ? schema : { ...schema, hide: true }, url }),
    });
    await app.register(swaggerUi, { routePrefix: "/api/docs" });
    app.get("/api/docs-json", { schema: { hide: true } }, async () => app.swagger());
  },
  { name: "openapi" },
);
