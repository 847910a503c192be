# Build, test and lint the confidential-VM guest stack.
# `make test` is what CI runs (.ci/run); `make demo` is the main job.

CARGO        ?= cargo
TARGET       ?= x86_64-unknown-linux-gnu
# Guest binaries link statically against glibc (there is no musl target here),
# and carry no checkout or cargo-home path, so the image's hash (the measured
# reference value) is the same wherever it is built. Exported for tests/bench.
CARGO_HOME_DIR  := $(or $(CARGO_HOME),$(HOME)/.cargo)
GUEST_RUSTFLAGS := -C target-feature=+crt-static --remap-path-prefix=$(CURDIR)=/build --remap-path-prefix=$(CARGO_HOME_DIR)=/cargo
export GUEST_RUSTFLAGS
RELEASE_DIR  := target/$(TARGET)/release

# Real peers the integration tests drive (Debian packages).
TEST_PKGS    := docker-registry skopeo umoci apache2-utils openssl busybox-static ca-certificates runc crun gnupg iptables
# The guest image and the QEMU harness (rootfs/, tests/vm).
TEST_PKGS    += qemu-system-x86 linux-image-amd64 cpio kmod xz-utils file
ROOTFS_DIR   := target/rootfs
VM           := $(CARGO) run -q -p vm-harness --bin cvm-vm --
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build release test lint fmt demo demo-busybox demo-local clean check-tools deps bench bench-pull bench-encrypted bench-aa bench-runtime bench-arena bench-policy bench-boot bench-cdh bench-pod rootfs vm vhost-device-vsock soak

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
	@$(MAKE) -s vhost-device-vsock cargo-fuzz

# The host end of the guest's vsock (no /dev/vhost-vsock needed). Installed
# once into ~/.cargo/bin (about 3.5 min cold), then reused.
vhost-device-vsock:
	@command -v vhost-device-vsock >/dev/null || { \
	  echo "installing vhost-device-vsock (cargo install, ~3.5 min once)"; \
	  $(CARGO) install --locked vhost-device-vsock; }

# The fuzz runner (fuzz/run.sh), once into ~/.cargo/bin (about 1 min cold).
cargo-fuzz:
	@command -v cargo-fuzz >/dev/null || { \
	  echo "installing cargo-fuzz (cargo install, ~1 min once)"; \
	  $(CARGO) install --locked cargo-fuzz; }

build: check-tools
	$(CARGO) build --workspace --all-targets

# Statically linked, size-optimised guest binaries (see [profile.release]).
release: check-tools
	RUSTFLAGS='$(GUEST_RUSTFLAGS)' $(CARGO) build --release --target $(TARGET) -p cvm-agent -p image-rs -p attestation-agent -p confidential-data-hub
	@ls -l $(RELEASE_DIR)/cvm-agent $(RELEASE_DIR)/cvm-agent-ctl $(RELEASE_DIR)/image-pull $(RELEASE_DIR)/attestation-agent $(RELEASE_DIR)/confidential-data-hub

lint: check-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Test peers, lint, then every test in the workspace (unit, wire contract,
# integration against real registries). CI=true makes a missing peer fatal.
# Then every fuzz target for 20 s without ASan (fuzz-ci; own target dir).
test: deps lint rootfs
	$(CARGO) test --workspace
	@$(MAKE) -s fuzz-ci

# The guest image: initramfs (cpio newc, reproducible) + uncompressed kernel
# in target/rootfs; prints its sha256 and size. Needs root (device nodes).
rootfs: release
	$(SUDO) ./rootfs/build.sh $(RELEASE_DIR) $(ROOTFS_DIR)

# Boots the image under QEMU (KVM when usable, else TCG), console on stdout,
# until Ctrl-C. Add --tdx / --snp on a TEE host: make vm VM_ARGS=--tdx
vm: deps rootfs
	$(VM) $(VM_ARGS) boot

# The main job: installs what it needs, builds the guest image, makes the CoCo
# host side (TLS registry, test KBS, an encrypted and cosign-signed image), boots
# the VM with initdata and starts a pod as kata's shim does: network, pause, the
# app pulled, decrypted and verified in the guest, its output; a copy signed by
# another key refused; DestroySandbox and the VM's own power-off. Step timings.
demo: check-tools deps rootfs
	$(VM) $(VM_ARGS) coco-demo

# The busybox container lifecycle through the agent API (no guest pull).
demo-busybox: check-tools deps rootfs
	$(VM) $(VM_ARGS) demo

# The agent on a unix socket on this host, driven by cvm-agent-ctl (no VM).
demo-local: check-tools
	$(CARGO) build -p cvm-agent
	./agent/demo.sh target/debug

# Benchmarks against real peers; results go to docs/BENCHMARKS.md.
bench: bench-pull bench-encrypted bench-aa bench-runtime bench-policy bench-boot bench-cdh bench-pod

# Image pull vs curl|gzip|tar, skopeo+umoci and ctr (root, about 10 min).
bench-pull:
	bash tests/bench/pull.sh

# Encrypted (ocicrypt) vs plain pull of the same ~500 MB image (root, about 3 min).
bench-encrypted:
	bash tests/bench/encrypted.sh

# Key release latency: attestation-agent against the test KBS on loopback.
bench-aa:
	sh tests/bench/bench-aa.sh

# Container create+start+wait through the agent vs crun and runc (root, about 2 min).
bench-runtime: deps
	bash tests/bench/runtime.sh

# One malloc arena (the agent's setting) vs glibc's default, under load (~2 min).
bench-arena: deps
	bash tests/bench/arena.sh

# Request policy cost: lifecycle with the confidential policy, allow-all and no
# engine; evaluation time per request (root, about 4 min).
bench-policy: deps
	bash tests/bench/policy.sh

# PullImage through the confidential-data-hub vs the image-pull CLI, and 4
# concurrent pulls sharing a base layer (root, about 3 min).
bench-cdh:
	bash tests/bench/cdh.sh

# Boot time under QEMU: uncompressed kernel vs Debian's vmlinuz (~3 min TCG).
bench-boot: deps rootfs
	bash tests/bench/boot.sh

# CoCo pod start under QEMU: VM start -> app running, a ~100 MiB encrypted
# signed guest pull cold vs warm, agent idle RSS, host image-pull (~3 min TCG).
bench-pod: deps rootfs
	bash tests/bench/pod.sh

# Soak: the release agent and data hub under a steady mix of lifecycles,
# execs, stdio, guest pulls, OOM kills and polls for SOAK_SECONDS (default
# 600; the documented run is 3600), sampling RSS, fds, threads, mounts and
# cgroups every 10 s into target/soak/soak.csv and soak.png; fails on any
# upward trend after the warm-up (root; writes docs/BENCHMARKS.md).
SOAK_SECONDS ?= 600
soak: deps
	SOAK_SECONDS=$(SOAK_SECONDS) CARGO=$(CARGO) bash tests/soak/soak.sh

# Fuzzing (issue 18): cargo-fuzz targets in fuzz/ (nightly, own lock file and
# target dir), each run FUZZ_SECONDS; the first crash, timeout or OOM stops
# with its input under fuzz/artifacts/<target>/. Inputs kept under
# fuzz/regressions/<target>/ are replayed by the owning crate's `cargo test`.
FUZZ_SECONDS ?= 60
FUZZ_SANITIZER ?= address
.PHONY: fuzz fuzz-build fuzz-ci cargo-fuzz
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SANITIZER=$(FUZZ_SANITIZER) FUZZ_TARGETS="$(FUZZ_TARGETS)" CARGO=$(CARGO) sh fuzz/run.sh

# The CI step of `make test`: 20 s per target, no sanitizer (see the README
# for its cost).
fuzz-ci:
	FUZZ_SECONDS=20 FUZZ_SANITIZER=none FUZZ_TARGETS="$(FUZZ_TARGETS)" CARGO=$(CARGO) sh fuzz/run.sh

fuzz-build:
	FUZZ_SECONDS=0 FUZZ_SANITIZER=$(FUZZ_SANITIZER) CARGO=$(CARGO) sh fuzz/run.sh

clean:
	$(CARGO) clean
