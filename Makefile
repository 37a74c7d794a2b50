# The commands people run. `make demo` and `make test` work on a fresh Debian machine with a
# Rust toolchain: they install what they need first.
CARGO ?= cargo
SLUICE := target/debug/sluice
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Built once per machine, outside the repo, so every clone (and CI) reuses it.
CACHE ?= $(HOME)/.cache/sluice
# Apache Kafka (the broker of the demo, the tests and the benchmarks): jars from Maven Central,
# run by scripts/kafka-broker.sh. The version is pinned here and in scripts/kafka/pom.xml.
KAFKA_VERSION := 4.1.1
KAFKA := $(CACHE)/kafka-$(KAFKA_VERSION)/libs/.complete
# The reference client built on Kafka's own Java client (tests/tools/java).
JAVA_TOOL := tests/tools/java/target/kafka-tool-1.jar
JAVA_TOOL_SRC := tests/tools/java/pom.xml $(wildcard tests/tools/java/src/main/java/dev/sluice/tool/*.java)
# Kafka Streams as a measured peer (runtime/benches/streams), built by `make bench`.
STREAMS_PEER := runtime/benches/streams/target/streams-peer-1.jar
STREAMS_PEER_SRC := runtime/benches/streams/pom.xml $(wildcard runtime/benches/streams/src/main/java/dev/sluice/bench/*.java)
FLINK_PEER := runtime/benches/flink/target/flink-peer-1.jar
FLINK_PEER_SRC := runtime/benches/flink/pom.xml $(wildcard runtime/benches/flink/src/main/java/dev/sluice/bench/*.java)
PYTHON := $(CACHE)/venv/bin/python
# confluent-kafka's schema-registry serializers (Avro, Protobuf, JSON Schema) and protoc (from
# grpcio-tools): the other implementation of the Confluent wire format in the tests and demo.
CONFLUENT_KAFKA_VERSION := 2.16.1
PY_SERDES := $(CACHE)/venv/.serdes-$(CONFLUENT_KAFKA_VERSION)
# Apicurio Registry (a Confluent-compatible schema registry) from Maven Central, run by
# scripts/schema-registry.sh for the demo and the tests. It needs Java 21 or newer.
APICURIO_VERSION := 3.3.3
REGISTRY := $(CACHE)/apicurio-registry-$(APICURIO_VERSION)/.complete
# The Kubernetes control plane of the operator's tests (kube-apiserver, kube-controller-manager,
# etcd): built from the Go module proxy (tests/tools/controlplane pins k8s.io/kubernetes) once
# per machine, run by scripts/kube-control-plane.sh. Only `make test` needs it.
KUBERNETES_VERSION := 1.36.3
VPA_VERSION := 1.8.1
CONTROLPLANE := $(CACHE)/kubernetes-$(KUBERNETES_VERSION)/.complete
# Offline Kubernetes checks (schemas, security linter) in their own virtualenv: checkov pins
# packages that conflict with others.
K8S_VENV := $(CACHE)/k8s-venv
# The VPA's v1 schema, generated from the official CRD, as an npm package (validate-vpa.mjs).
NODE_MODULES := $(CACHE)/node
VPA_SCHEMA := $(NODE_MODULES)/node_modules/@kubernetes-models/autoscaler/package.json
CEL := $(K8S_VENV)/.cel-python-0.5.0
export SLUICE_CACHE := $(CACHE)
export KAFKA_VERSION
export APICURIO_VERSION
export KUBERNETES_VERSION

.PHONY: demo test lint bench build deps fuzz java-maven

## deps: what the build and tests need: a C compiler (the C plugin, the header check), a JDK and
## Maven (Debian packages), Apache Kafka (from Maven Central, once per machine), the reference
## clients (Kafka's own Java client, built with Maven; confluent-kafka from PyPI with its
## schema-registry serializers, in a virtualenv), Apicurio Registry (Maven Central; Java 21+,
## installed if the machine has none), and the PostgreSQL and MariaDB servers (Debian
## packages; the tests start their own instances on 127.0.0.1), promtool (Debian package
## prometheus: checks the alert rules and lints /metrics), tmux (drives `sluice top` in a real
## terminal), kubectl (kustomize) and, from PyPI, kubernetes-validate, checkov and cel-python
## (evaluates the CRD's and admission policies' CEL) for deploy/, and from npm the VPA schema.
deps: $(KAFKA) $(JAVA_TOOL) $(PYTHON) $(PY_SERDES) $(REGISTRY) $(K8S_VENV)/bin/checkov $(CEL) $(VPA_SCHEMA)
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install a Rust toolchain (rustup) first"; exit 1; }
	@command -v gcc >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends gcc libc6-dev; }
	@# librdkafka's TLS and SASL (SCRAM, OAUTHBEARER with OIDC) link Debian's OpenSSL and libcurl;
	@# openssl also makes the tests' certificates (scripts/tls-certs.sh).
	@{ pkg-config --exists openssl libcurl && command -v openssl; } >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends pkg-config libssl-dev libcurl4-openssl-dev openssl; }
	@{ ls /usr/lib/postgresql/*/bin/initdb && command -v psql; } >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends postgresql postgresql-client; }
	@{ [ -x /usr/sbin/mariadbd ] && command -v mariadb-install-db && command -v mariadb; } >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends mariadb-server mariadb-client; }
	@{ command -v promtool && command -v tmux; } >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends prometheus tmux; }
	@command -v kubectl >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends kubectl; }

java-maven:
	@{ command -v java && command -v mvn; } >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven; }

$(KAFKA): scripts/kafka/pom.xml | java-maven
	@echo "fetching Apache Kafka $(KAFKA_VERSION) from Maven Central once; it is cached in $(CACHE)"
	rm -rf $(dir $@)
	mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies -Dkafka.version=$(KAFKA_VERSION) -DoutputDirectory=$(dir $@)
	touch $@

$(REGISTRY): | java-maven
	@scripts/schema-registry.sh --java >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends openjdk-21-jre-headless; }
	@echo "fetching Apicurio Registry $(APICURIO_VERSION) from Maven Central once; it is cached in $(CACHE)"
	rm -rf $(dir $@)
	mvn -q -B dependency:copy -Dartifact=io.apicurio:apicurio-registry-app:$(APICURIO_VERSION):tar.gz:all -DoutputDirectory=$(dir $@)
	tar xzf $(dir $@)apicurio-registry-app-$(APICURIO_VERSION)-all.tar.gz -C $(dir $@)
	rm $(dir $@)apicurio-registry-app-$(APICURIO_VERSION)-all.tar.gz
	touch $@

$(JAVA_TOOL): $(JAVA_TOOL_SRC) | java-maven
	rm -rf tests/tools/java/target
	mvn -q -B -f tests/tools/java/pom.xml package dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=target/libs

$(CONTROLPLANE): tests/tools/controlplane/go.mod tests/tools/controlplane/go.sum
	@command -v go >/dev/null || { echo "error: go not found: install the Go toolchain (the test control plane is built from the Go module proxy)"; exit 1; }
	@echo "building kube-apiserver, kube-controller-manager and etcd (Kubernetes $(KUBERNETES_VERSION)) from the Go module proxy once; cached in $(CACHE)"
	@# The version the servers report (a module build has none of its own).
	cd tests/tools/controlplane && go build -trimpath -o $(dir $@) \
	  -ldflags='-s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,-X $(p).gitVersion=v$(KUBERNETES_VERSION) -X $(p).gitMajor=$(word 1,$(subst ., ,$(KUBERNETES_VERSION))) -X $(p).gitMinor=$(word 2,$(subst ., ,$(KUBERNETES_VERSION))) -X $(p).gitTreeState=clean)' \
	  ./cmd/...
	@# The VerticalPodAutoscaler CRDs, from the VPA's own Go module (its deploy/ directory).
	vpa=$$(cd tests/tools/controlplane && go mod download -json k8s.io/autoscaler/vertical-pod-autoscaler@v$(VPA_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p') && \
	  cp "$$vpa/deploy/vpa-v1-crd-gen.yaml" $(dir $@)vpa-crds.yaml
	touch $@

$(PYTHON):
	python3 -m venv $(CACHE)/venv || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && python3 -m venv $(CACHE)/venv; }
	$(PYTHON) -m pip install --quiet confluent-kafka==$(CONFLUENT_KAFKA_VERSION)

$(PY_SERDES): $(PYTHON)
	$(PYTHON) -m pip install --quiet "confluent-kafka[avro,json,protobuf,schemaregistry]==$(CONFLUENT_KAFKA_VERSION)" grpcio-tools==1.85.4
	touch $@

$(K8S_VENV)/bin/checkov:
	python3 -m venv $(K8S_VENV)
	$(K8S_VENV)/bin/python -m pip install --quiet kubernetes-validate==1.37.0 checkov==3.3.30

$(CEL): $(K8S_VENV)/bin/checkov
	$(K8S_VENV)/bin/python -m pip install --quiet cel-python==0.5.0
	touch $@

$(VPA_SCHEMA):
	@command -v npm >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends nodejs npm; }
	npm install --silent --no-audit --no-fund --prefix $(NODE_MODULES) @kubernetes-models/autoscaler@5.0.0

## build: the runtime, every Rust plugin, and the C plugin.
build: deps
	$(CARGO) build --workspace
	$(MAKE) -s -C plugins/c-mask OUT=$(CURDIR)/target/plugins

## demo: run the example pipelines on their sample files and show what they produce.
demo: build
	@echo; echo "== the plugin: $(SLUICE) plugin inspect target/debug/libfilter_and_enrich.so"
	@$(SLUICE) plugin inspect target/debug/libfilter_and_enrich.so | head -5
	@echo; echo "== input: plugins/filter-and-enrich/bookings.jsonl"
	@cat plugins/filter-and-enrich/bookings.jsonl
	@echo; echo "== $(SLUICE) run -f plugins/filter-and-enrich/pipeline.yaml (enriched bookings on stdout)"
	@$(SLUICE) run -f plugins/filter-and-enrich/pipeline.yaml
	@echo; echo "== the 'filtered' output: target/demo-out/filtered.jsonl"
	@cat target/demo-out/filtered.jsonl
	@echo; echo "== the same bookings counted per city in hourly windows, kept in a state store (windowed-count)"
	@$(SLUICE) run -f plugins/windowed-count/pipeline.yaml
	@echo; echo "== bookings joined with their payments within 30 minutes, repeated events dropped (booking-payments, state store)"
	@cat plugins/booking-payments/events.jsonl
	@$(SLUICE) --log-format human run -f plugins/booking-payments/pipeline.yaml
	@echo; echo "== card numbers masked by a plugin written in C (c-mask)"
	@$(SLUICE) run -f plugins/c-mask/pipeline.yaml
	@echo; echo "==== and on Kafka: a real broker, the reference client, offsets committed after delivery"
	@./scripts/demo-kafka.sh
	@echo; echo "==== and on Kubernetes: the Deployment the operator applies for deploy/examples/streampipeline.yaml (sluice render)"
	@$(SLUICE) render -f deploy/examples/streampipeline.yaml | sed -n '/^kind: Deployment/,/^---/p' | grep -E 'kind:|replicas:|priorityClassName|capacity-type|cpu:'
	@echo; echo "== a week of diurnal load: HPA vs fixed pods + VPA vs the operator's policy (sluice capacity simulate)"
	@$(SLUICE) capacity simulate deploy/capacity/diurnal-7d.csv --plot target/capacity.svg
	@echo "(plot: target/capacity.svg; the model and the results: deploy/capacity/README.md)"

## test: lint, the crates' dependency layers (scripts/check-deps.sh), the alert rules (promtool),
## then every test (unit, plugin end-to-end, Kafka, secured Kafka, databases, faults, Kubernetes),
## the test binaries side by side (scripts/test.sh; TEST_JOBS at once, logs in target/test-logs).
test: build lint $(CONTROLPLANE)
	scripts/check-deps.sh
	promtool check rules deploy/observability/prometheus-rules.yaml
	cd deploy/observability && promtool test rules prometheus-rules.test.yaml
	SLUICE_K8S_VENV=$(K8S_VENV) SLUICE_NODE_MODULES=$(NODE_MODULES) deploy/check.sh
	CARGO=$(CARGO) scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: the plugin-boundary benchmark (dlopen vs statically linked), the Kafka benchmark
## (sluice vs a raw rdkafka loop on an Apache Kafka broker), what an event costs (the same two on
## librdkafka's mock cluster, CPU per event and latency), the PostgreSQL sink vs psql COPY and
## sluice vs Kafka Streams and Flink on the same broker (runtime/benches/streams and
## runtime/benches/flink, built here); see
## BENCHMARKS.md.
bench: deps $(STREAMS_PEER) $(FLINK_PEER)
	$(CARGO) build --release -p passthrough -p filter-and-enrich -p windowed-count -p sluice-cli
	$(CARGO) bench -p sluice-runtime --bench abi
	$(CARGO) bench -p sluice-runtime --bench kafka
	$(CARGO) bench -p sluice-runtime --bench cost
	$(CARGO) bench -p sluice-runtime --bench state
	$(CARGO) bench -p sluice-runtime --bench postgres
	$(CARGO) bench -p sluice-runtime --bench schemas
	$(CARGO) bench -p sluice-runtime --bench peers
	$(CARGO) bench -p sluice-runtime --bench tls

$(STREAMS_PEER): $(STREAMS_PEER_SRC) | java-maven
	rm -rf runtime/benches/streams/target
	mvn -q -B -f runtime/benches/streams/pom.xml package dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=target/libs

$(FLINK_PEER): $(FLINK_PEER_SRC) | java-maven
	rm -rf runtime/benches/flink/target
	mvn -q -B -f runtime/benches/flink/pom.xml package dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=target/libs

## fuzz: every fuzz target (fuzz/fuzz_targets/) for FUZZ_SECONDS each (default 120) with
## libFuzzer through cargo-fuzz (installed once into the cache). Needs a nightly toolchain
## (`rustup toolchain install nightly`). Seeds: fuzz/seeds/ (committed) plus the built plugins;
## what the fuzzer finds grows fuzz/corpus/; a crash stops it with the input in fuzz/artifacts/.
FUZZ_SECONDS ?= 120
CARGO_FUZZ := $(CACHE)/cargo-fuzz/bin/cargo-fuzz
FUZZ_TARGETS := spec_parse library_precheck plugin_descriptor json_lines dlq_headers wire_values

$(CARGO_FUZZ):
	$(CARGO) install cargo-fuzz --version 0.13.2 --locked --root $(CACHE)/cargo-fuzz

fuzz: $(CARGO_FUZZ) build
	@rustup run nightly rustc --version >/dev/null 2>&1 || { echo "error: make fuzz needs a nightly toolchain: rustup toolchain install nightly"; exit 1; }
	@mkdir -p $(addprefix fuzz/corpus/,$(FUZZ_TARGETS))
	@cp target/plugins/libc_mask.so fuzz/corpus/library_precheck/
	@mkdir -p target/fuzz-logs
	@for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s (log: target/fuzz-logs/$$t.log)"; \
	  (cd fuzz && PATH="$(CACHE)/cargo-fuzz/bin:$$PATH" cargo +nightly fuzz run --release --debug-assertions $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -max_len=65536) > target/fuzz-logs/$$t.log 2>&1; \
	  status=$$?; grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs)' target/fuzz-logs/$$t.log; \
	  if [ $$status -ne 0 ]; then tail -40 target/fuzz-logs/$$t.log; echo "error: fuzz target $$t failed: the input is in fuzz/artifacts/$$t"; exit 1; fi; \
	done
