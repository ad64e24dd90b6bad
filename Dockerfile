# syntax=docker/dockerfile:1
# One image, one target per service: docker build --target api|projector|gateway .
# The services run their TypeScript with tsx (as `pnpm start` does), so there is no build step to drift from.

FROM node:20-bookworm-slim AS base
ENV PNPM_HOME=/pnpm PATH=/pnpm:$PATH CI=true
RUN npm install -g pnpm@10.24.0 && npm cache clean --force
WORKDIR /app

# Dependencies first, from the lockfile alone, so source changes reuse this layer.
FROM base AS dependencies
COPY pnpm-lock.yaml pnpm-workspace.yaml ./
RUN pnpm fetch

FROM dependencies AS workspace
COPY . .
RUN pnpm install --offline --frozen-lockfile \
  && mkdir -p /data && chown node:node /data
# The embedded database and the development issuer's key (only used when DATABASE_URL / OIDC_ISSUER are unset).
ENV KEYLEDGER_DATA_DIR=/data NODE_ENV=production
USER node

FROM workspace AS api
ENV PORT=3000
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+process.env.PORT+'/health/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["node_modules/.bin/tsx", "services/api/src/main.ts"]

FROM workspace AS projector
ENV PORT=3002
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+process.env.PORT+'/health/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["node_modules/.bin/tsx", "services/projector/src/main.ts"]

FROM workspace AS gateway
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+process.env.PORT+'/health/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["node_modules/.bin/tsx", "services/gateway/src/main.ts"]
