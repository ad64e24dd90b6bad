import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApi, startApi } from "../support/api-harness";
import { loadContract, type OpenApiDocument } from "../support/contract";

const METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/** Follows local `$ref`s (`#/components/...`) within `doc`. */
function deref(doc: OpenApiDocument, node: OpenApiDocument | undefined): OpenApiDocument | undefined {
  let current = node;
  for (let hops = 0; current && typeof current.$ref === "string"; hops++) {
    if (hops > 20) throw new Error(`$ref loop at ${current.$ref}`);
    const ref: string = current.$ref;
    if (!ref.startsWith("#/")) throw new Error(`non-local $ref ${ref}`);
    current = ref
      .slice(2)
      .split("/")
      .reduce<OpenApiDocument | undefined>((n, part) => n?.[part.replaceAll("~1", "/").replaceAll("~0", "~")], doc);
    if (current === undefined) throw new Error(`unresolved $ref ${ref}`);
  }
  return current;
}

type Shape = {
  type: string[];
  format?: string;
  enum?: unknown[];
  items?: Shape;
  properties?: Record<string, Shape>;
  required?: string[];
};

/**
 * What a schema means to a client, independent of how it is written: types (OpenAPI 3.0 `nullable` and 3.1
 * `type: [..., "null"]` alike), format, enum, items, property names with their shapes, and the required list.
 */
function shape(doc: OpenApiDocument, node: OpenApiDocument | undefined): Shape {
  const schema = deref(doc, node);
  if (!schema) return { type: [] };
  const types = new Set<string>();
  const addTypes = (s: OpenApiDocument) => {
    if (Array.isArray(s.type)) for (const t of s.type) types.add(t);
    else if (typeof s.type === "string") types.add(s.type);
    if (s.nullable === true) types.add("null");
  };
  addTypes(schema);
  let variants: OpenApiDocument[] = [];
  for (const key of ["anyOf", "oneOf"]) if (Array.isArray(schema[key])) variants = schema[key];
  let base = schema;
  for (const variant of variants.map((v) => deref(doc, v) as OpenApiDocument)) {
    addTypes(variant);
    if (variant.type !== "null") base = { ...variant, ...base, type: undefined };
  }
  const result: Shape = { type: [...types].sort() };
  if (base.format !== undefined) result.format = base.format;
  if (base.enum !== undefined) result.enum = [...base.enum];
  if (base.items !== undefined) result.items = shape(doc, base.items);
  if (base.properties !== undefined) {
    result.properties = Object.fromEntries(
      Object.entries(base.properties as Record<string, OpenApiDocument>).map(([name, p]) => [name, shape(doc, p)]),
    );
    result.required = [...((base.required as string[] | undefined) ?? [])].sort();
  }
  return result;
}

function operations(doc: OpenApiDocument): Map<string, OpenApiDocument> {
  const result = new Map<string, OpenApiDocument>();
  for (const [path, item] of Object.entries(doc.paths as Record<string, OpenApiDocument>)) {
    for (const method of METHODS) if (item[method]) result.set(`${method.toUpperCase()} ${path}`, item[method]);
  }
  return result;
}

function parameters(doc: OpenApiDocument, operation: OpenApiDocument) {
  return ((operation.parameters ?? []) as OpenApiDocument[])
    .map((p) => deref(doc, p) as OpenApiDocument)
    .map((p) => ({
      in: p.in as string,
      // Header names are case-insensitive.
      name: p.in === "header" ? String(p.name).toLowerCase() : (p.name as string),
      required: p.required === true,
      schema: shape(doc, p.schema),
    }))
    .sort((a, b) => `${a.in}:${a.name}`.localeCompare(`${b.in}:${b.name}`));
}

/** The served ApiKeyList may carry `organizationId` (the current official client has it); nothing else extra. */
function withoutOrganizationId(s: Shape): Shape {
  if (!s.properties || !("organizationId" in s.properties)) return s;
  const { organizationId: _, ...properties } = s.properties;
  return { ...s, properties, required: (s.required ?? []).filter((r) => r !== "organizationId") };
}

function jsonSchemaOf(doc: OpenApiDocument, holder: OpenApiDocument | undefined): Shape | undefined {
  const content = deref(doc, holder)?.content as Record<string, OpenApiDocument> | undefined;
  if (!content) return undefined;
  return shape(doc, content["application/json"]?.schema);
}

describe("GET /api/docs-json against the Daytona contract", () => {
  let api: RunningApi;
  let served: OpenApiDocument;
  const spec = loadContract();
  beforeAll(async () => {
    api = await startApi();
    const res = await fetch(`${api.baseUrl}/api/docs-json`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    served = (await res.json()) as OpenApiDocument;
  });
  afterAll(async () => {
    await api.close();
  });

  it("is OpenAPI 3.1 with paths relative to an /api server", () => {
    expect(served.openapi).toMatch(/^3\.1\.\d+$/);
    expect(served.servers?.[0]?.url).toMatch(/\/api$/);
    expect(served.info?.title).toBe(spec.info.title);
  });

  it("has every path of the contract, each with exactly the contract's methods", () => {
    for (const path of Object.keys(spec.paths)) expect(Object.keys(served.paths)).toContain(path);
    const methodsOf = (doc: OpenApiDocument, path: string) =>
      METHODS.filter((m) => doc.paths[path]?.[m] !== undefined).sort();
    for (const path of Object.keys(spec.paths)) expect(methodsOf(served, path), path).toEqual(methodsOf(spec, path));
  });

  it("any other path is a documented extension (issue 4) with operationIds of its own", () => {
    const contractIds = new Set([...operations(spec).values()].map((op) => op.operationId));
    const extensions = [...operations(served)].filter(([key]) => !operations(spec).has(key));
    for (const [key, operation] of extensions) {
      expect(Object.keys(spec.paths), key).not.toContain(key.split(" ")[1]);
      expect(typeof operation.operationId, key).toBe("string");
      expect(contractIds.has(operation.operationId), key).toBe(false);
    }
    const allIds = [...operations(served).values()].map((op) => op.operationId);
    expect(new Set(allIds).size).toBe(allIds.length);
  });

  it("has the contract's operationIds, summaries, tags and security per operation", () => {
    const servedOps = operations(served);
    for (const [key, expected] of operations(spec)) {
      const actual = servedOps.get(key) as OpenApiDocument;
      expect(actual.operationId, key).toBe(expected.operationId);
      expect(actual.summary, key).toBe(expected.summary);
      expect(actual.tags, key).toEqual(expected.tags);
      expect(actual.security, key).toEqual(expected.security);
    }
  });

  it("has the contract's parameters: the organization header and the path parameters", () => {
    const servedOps = operations(served);
    for (const [key, expected] of operations(spec)) {
      expect(parameters(served, servedOps.get(key) as OpenApiDocument), key).toEqual(parameters(spec, expected));
    }
  });

  it("has the contract's response codes: every one of them, the same success codes, extra ones only errors", () => {
    const servedOps = operations(served);
    for (const [key, expected] of operations(spec)) {
      const actualCodes = Object.keys((servedOps.get(key) as OpenApiDocument).responses).sort();
      const expectedCodes = Object.keys(expected.responses).sort();
      for (const code of expectedCodes) expect(actualCodes, key).toContain(code);
      const success = (codes: string[]) => codes.filter((c) => c.startsWith("2"));
      expect(success(actualCodes), key).toEqual(success(expectedCodes));
      for (const code of actualCodes) expect(/^[245]\d\d$/.test(code), `${key} ${code}`).toBe(true);
    }
  });

  it("has the contract's response schemas: property names, shapes and required lists", () => {
    const servedOps = operations(served);
    for (const [key, expected] of operations(spec)) {
      const actual = servedOps.get(key) as OpenApiDocument;
      for (const [code, response] of Object.entries(expected.responses as Record<string, OpenApiDocument>)) {
        const expectedSchema = jsonSchemaOf(spec, response);
        const actualSchema = jsonSchemaOf(served, actual.responses[code]);
        if (expectedSchema === undefined) {
          if (code.startsWith("2")) expect(actualSchema, `${key} ${code} has no body`).toBeUndefined();
          continue;
        }
        expect(actualSchema, `${key} ${code}`).toBeDefined();
        const normalized =
          actualSchema?.items !== undefined
            ? { ...actualSchema, items: withoutOrganizationId(actualSchema.items) }
            : withoutOrganizationId(actualSchema as Shape);
        expect(normalized, `${key} ${code}`).toEqual(expectedSchema);
      }
    }
  });

  it("lists organizationId on ApiKeyList items (the official client's extra field) as a string", () => {
    const list = jsonSchemaOf(served, operations(served).get("GET /api-keys")?.responses["200"]);
    expect(list?.items?.properties?.organizationId).toEqual({ type: ["string"] });
  });

  it("has the contract's request body for createApiKey", () => {
    const expected = operations(spec).get("POST /api-keys") as OpenApiDocument;
    const actual = operations(served).get("POST /api-keys") as OpenApiDocument;
    const actualBody = deref(served, actual.requestBody) as OpenApiDocument;
    expect(actualBody.required).toBe(true);
    expect(Object.keys(actualBody.content)).toEqual(["application/json"]);
    expect(jsonSchemaOf(served, actualBody)).toEqual(jsonSchemaOf(spec, expected.requestBody));
  });

  it("documents error responses with Daytona's error body", () => {
    for (const [key, operation] of operations(served)) {
      for (const [code, response] of Object.entries(operation.responses as Record<string, OpenApiDocument>)) {
        if (!/^[45]/.test(code)) continue;
        const body = jsonSchemaOf(served, response);
        if (body === undefined) continue;
        expect(Object.keys(body.properties ?? {}).sort(), `${key} ${code}`).toEqual([
          "error",
          "message",
          "path",
          "statusCode",
          "timestamp",
        ]);
      }
    }
  });

  it("has the contract's security schemes", () => {
    expect(served.components.securitySchemes).toEqual(spec.components.securitySchemes);
  });

  it("every $ref in the served document resolves", () => {
    const visit = (node: unknown) => {
      if (Array.isArray(node)) node.forEach(visit);
      else if (node && typeof node === "object") {
        if (typeof (node as OpenApiDocument).$ref === "string")
          expect(() => deref(served, node as OpenApiDocument)).not.toThrow();
        for (const value of Object.values(node)) visit(value);
      }
    };
    visit(served);
  });
});
