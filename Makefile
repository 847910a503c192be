# Build, test and lint the confidential-VM guest stack.
# `make test` is what CI runs (.ci/run); `make demo` is the main job.

CARGO        ?= cargo
TARGET       ?= x86_64-unknown-linux-gnu
# Guest binaries link statically against glibc (there is no musl target here).
STATIC_FLAGS := -C target-feature=+crt-static
RELEASE_DIR  := target/$(TARGET)/release

.PHONY: all build release test lint fmt demo clean check-tools

all: build

check-tools:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

build: check-tools
	$(CARGO) build --workspace --all-targets

# Statically linked, size-optimised guest binaries (see [profile.release]).
release: check-tools
	RUSTFLAGS='$(STATIC_FLAGS)' $(CARGO) build --release --target $(TARGET) -p cvm-agent
	@ls -l $(RELEASE_DIR)/cvm-agent $(RELEASE_DIR)/cvm-agent-ctl

lint: check-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Lint, then every test in the workspace (unit, wire contract, integration).
test: lint
	$(CARGO) test --workspace

# Starts the agent on a unix socket and drives it with the host client, as a
# shim would. (Booting it as PID 1 of a QEMU VM arrives with the rootfs work.)
demo: check-tools
	$(CARGO) build -p cvm-agent
	./agent/demo.sh target/debug

clean:
	$(CARGO) clean
