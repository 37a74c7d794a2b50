// Validates VerticalPodAutoscaler objects against the VPA autoscaling.k8s.io/v1 schema that the
// npm package @kubernetes-models/autoscaler generates from the official CRD (installed by
// `make deps`). Usage: node deploy/validate-vpa.mjs MODULES_DIR VPAS.json
// VPAS.json is a JSON array of objects, each {"source": "...", "object": {...}}. Exits 1 naming
// the source and the field of the first invalid one, or when the negative controls pass (a
// validator that accepts anything proves nothing).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, file] = process.argv.slice(2);
if (!modules || !file) {
  console.error("usage: node deploy/validate-vpa.mjs MODULES_DIR VPAS.json");
  process.exit(2);
}
const path = join(modules, "node_modules/@kubernetes-models/autoscaler/autoscaling.k8s.io/v1/VerticalPodAutoscaler.js");
let VerticalPodAutoscaler;
try {
  ({ VerticalPodAutoscaler } = await import(pathToFileURL(path).href));
} catch (e) {
  console.error(`error: ${path}: cannot load the VPA schema (${e.message}): run \`make deps\``);
  process.exit(1);
}

const problem = (object) => {
  try {
    new VerticalPodAutoscaler(object).validate();
    return null;
  } catch (e) {
    return e.message;
  }
};

const vpas = JSON.parse(readFileSync(file, "utf8"));
if (vpas.length === 0) {
  console.error(`error: ${file}: no VerticalPodAutoscaler to check`);
  process.exit(1);
}
for (const { source, object } of vpas) {
  const error = problem(object);
  if (error) {
    console.error(`error: ${source}: VerticalPodAutoscaler ${object.metadata?.name}: ${error}`);
    process.exit(1);
  }
}
// Negative controls: a bad update mode, and `Off` as a YAML 1.1 parser reads it unquoted.
for (const mode of ["Sometimes", false]) {
  const bad = structuredClone(vpas[0].object);
  bad.spec.updatePolicy.updateMode = mode;
  if (!problem(bad)) {
    console.error(`error: the VPA schema accepted updateMode ${JSON.stringify(mode)}: the validator checks nothing`);
    process.exit(1);
  }
}
console.log(`${vpas.length} VerticalPodAutoscalers valid against the VPA v1 schema (updateMode ${[...new Set(vpas.map((v) => v.object.spec.updatePolicy.updateMode))].join(", ")}); negative controls refused`);
