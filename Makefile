# connhealth — the commands the README and CONTRIBUTING name.
.PHONY: test demo demo-down scan crds bench release

# Every test tier: fmt, clippy, unit, root, control plane. What CI runs.
test:
	scripts/test

# The local cluster with a real node (root), the chart, a leaking workload,
# and what connhealth says about it. `make demo-down` removes it all.
demo:
	scripts/demo

demo-down:
	scripts/demo down

# Publish the images (by digest, cosign-signed, with CycloneDX SBOMs) and the
# chart (an OCI artifact, signed) to a registry; see scripts/release --help:
#   make release REGISTRY=registry.example.com/connhealth KEY=cosign.key
release:
	scripts/release publish --registry "$(REGISTRY)" --key "$(KEY)"

# One sweep of every network namespace on this host (needs root).
scan:
	cargo run --release --locked -p connhealth-agent -- scan

# Regenerate the CRD YAML from the Rust types in crds/src.
crds:
	cargo run --locked -p connhealth-crds --bin crdgen

# The scanner's benchmark next to ss and /proc/net/tcp (needs root; see
# BENCHMARKS.md).
bench:
	cargo run --release --locked -p connhealth-scan --bin connhealth-bench -- run
