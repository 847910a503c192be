# Build, test and lint the confidential-VM guest stack.
# `make test` is what CI runs (.ci/run); `make demo` is the main job.

CARGO        ?= cargo
TARGET       ?= x86_64-unknown-linux-gnu
# Guest binaries link statically against glibc (there is no musl target here).
STATIC_FLAGS := -C target-feature=+crt-static
RELEASE_DIR  := target/$(TARGET)/release

# Real peers the integration tests drive (Debian packages).
TEST_PKGS    := docker-registry skopeo umoci apache2-utils openssl busybox-static ca-certificates gnupg
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build release test lint fmt demo clean check-tools deps bench bench-pull bench-encrypted bench-aa

all: build

check-tools:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

# Installs the test peers that are missing (apt-get update only when needed).
deps:
	@missing=$$(for p in $(TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing test peers:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: check-tools
	$(CARGO) build --workspace --all-targets

# Statically linked, size-optimised guest binaries (see [profile.release]).
release: check-tools
	RUSTFLAGS='$(STATIC_FLAGS)' $(CARGO) build --release --target $(TARGET) -p cvm-agent -p image-rs -p attestation-agent
	@ls -l $(RELEASE_DIR)/cvm-agent $(RELEASE_DIR)/cvm-agent-ctl $(RELEASE_DIR)/image-pull $(RELEASE_DIR)/attestation-agent

lint: check-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Test peers, lint, then every test in the workspace (unit, wire contract,
# integration against real registries). CI=true makes a missing peer fatal.
test: deps lint
	$(CARGO) test --workspace

# Starts the agent on a unix socket and drives it with the host client, as a
# shim would. (Booting it as PID 1 of a QEMU VM arrives with the rootfs work.)
demo: check-tools
	$(CARGO) build -p cvm-agent
	./agent/demo.sh target/debug

# Benchmarks against real peers; results go to docs/BENCHMARKS.md.
bench: bench-pull bench-encrypted bench-aa

# Image pull vs curl|gzip|tar, skopeo+umoci and ctr (root, about 10 min).
bench-pull:
	bash tests/bench/pull.sh

# Encrypted (ocicrypt) vs plain pull of the same ~500 MB image (root, about 3 min).
bench-encrypted:
	bash tests/bench/encrypted.sh

# Key release latency: attestation-agent against the test KBS on loopback.
bench-aa:
	sh tests/bench/bench-aa.sh

clean:
	$(CARGO) clean
