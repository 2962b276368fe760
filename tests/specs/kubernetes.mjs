// Checks every object in deploy/kubernetes against the published schema of its kind: the Kubernetes API
// (kubernetes-models) and the custom resources' CRDs (the Prometheus Operator's ServiceMonitor and
// PrometheusRule, KEDA's ScaledObject and TriggerAuthentication), as the @kubernetes-models packages carry
// them, so nothing is fetched at run time. Two passes: the JSON Schema (types, required fields, patterns,
// enums) through each model's validate(), and unknown fields, which those schemas let through (a cluster
// prunes them, or refuses them with kubectl's strict validation), through TypeScript's excess-property check
// against the packages' types. A kind without a schema here fails, so a new one is not left out. Before
// the shipped files, broken copies must be refused, so the checker itself is known to fail.
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import yaml from "js-yaml";
import ts from "typescript";

// Which package holds the schemas of an API group.
const packages = {
  "": "kubernetes-models",
  apps: "kubernetes-models",
  policy: "kubernetes-models",
  "networking.k8s.io": "kubernetes-models",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "keda.sh": "@kubernetes-models/keda",
};
// kustomize's own file, not an API object: kubectl reads it and never sends it to the cluster.
const notApiObjects = new Set(["kustomize.config.k8s.io/v1beta1/Kustomization"]);

function modulePath(object) {
  const [group, version] = object.apiVersion.includes("/") ? object.apiVersion.split("/") : ["", object.apiVersion];
  const pkg = packages[group];
  return pkg && `${pkg}/${group ? `${group}/` : ""}${version}/${object.kind}`;
}

/// Problems of `objects` ([name, object] pairs), one string each.
async function check(objects) {
  const problems = [];
  const typed = [];
  for (const [what, object] of objects) {
    const path = modulePath(object);
    if (!path) {
      problems.push(`${what}: no schema for ${object.apiVersion}; add its package to tests/specs`);
      continue;
    }
    let Model;
    try {
      Model = (await import(path))[object.kind];
    } catch (e) {
      problems.push(`${what}: no schema in ${path} (${e.code ?? e.message})`);
      continue;
    }
    try {
      new Model(object).validate();
    } catch (e) {
      problems.push(`${what}: ${e.message}`);
    }
    typed.push([what, path, object]);
  }
  problems.push(...unknownFields(typed));
  return problems;
}

/// TypeScript's excess-property errors of each object typed as its kind's interface, compiled in memory.
function unknownFields(typed) {
  const dir = fileURLToPath(new URL(".", import.meta.url));
  const file = `${dir}__deploy_kubernetes__.ts`;
  const lines = [];
  const owner = [];
  typed.forEach(([what, path, object], i) => {
    lines.push(`import type { I${object.kind} as T${i} } from "${path}";`);
    owner.push(what);
  });
  typed.forEach(([what, , object], i) => {
    for (const line of `export const o${i}: T${i} = ${JSON.stringify(object, null, 2)};`.split("\n")) {
      lines.push(line);
      owner.push(what);
    }
  });
  const source = lines.join("\n");
  const options = { strict: true, noEmit: true, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, skipLibCheck: true };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.fileExists = (f) => f === file || fileExists(f);
  host.readFile = (f) => (f === file ? source : readFile(f));
  host.getSourceFile = (f, v, ...rest) =>
    f === file ? ts.createSourceFile(f, source, v) : getSourceFile.call(host, f, v, ...rest);
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const message = ts.flattenDiagnosticMessageText(d.messageText, " ");
    if (d.file?.fileName !== file) return `TypeScript: ${message}`;
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    return `${owner[line]}: ${message} (line ${line + 1} of the generated check)`;
  });
}

const dir = new URL("../../deploy/kubernetes/", import.meta.url);
const shipped = [];
for (const name of readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort()) {
  for (const object of yaml.loadAll(readFileSync(new URL(name, dir), "utf8")).filter(Boolean)) {
    if (notApiObjects.has(`${object.apiVersion}/${object.kind}`)) continue;
    shipped.push([`${name}: ${object.kind} ${object.metadata?.name ?? ""}`, object]);
  }
}

// Broken copies of each custom resource: a misspelt field, a wrong type, a missing required field.
const broken = [];
for (const [what, object] of shipped.filter(([, o]) => !o.apiVersion.includes("k8s.io") && o.apiVersion.includes("."))) {
  const misspelt = structuredClone(object);
  misspelt.spec.notAField = 1;
  const wrongType = structuredClone(object);
  wrongType.spec = "spec";
  broken.push([`${what} with spec.notAField`, misspelt], [`${what} with a string spec`, wrongType]);
}
const rule = shipped.find(([, o]) => o.kind === "PrometheusRule");
if (rule) {
  const noExpr = structuredClone(rule[1]);
  delete noExpr.spec.groups[0].rules[0].expr;
  broken.push(["PrometheusRule without a rule's expr", noExpr]);
}
const missed = [];
for (const b of broken) {
  if ((await check([b])).length === 0) missed.push(b[0]);
}
if (broken.length === 0 || missed.length > 0) {
  console.error(`the checker accepts what it must refuse: ${missed.join("; ") || "no custom resource found"}`);
  process.exit(1);
}

const problems = await check(shipped);
for (const p of problems) console.error(`deploy/kubernetes/${p}`);
if (problems.length > 0 || shipped.length === 0) process.exit(1);
console.log(
  `deploy/kubernetes: OK (${shipped.length} objects match their schemas; ${broken.length} broken copies refused)`,
);
