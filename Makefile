# handoff: zero-downtime CodeDeploy releases behind a systemd socket.
#
#   make demo     the main job: builds everything and deploys releases locally (see README)
#   make test     unit tests and end-to-end tests against a real systemd (needs root)
#   make dist     release artifacts for x86_64 and aarch64: tarballs, .deb, .rpm, SHA256SUMS in dist/
#   make bundle   the revision zip: dist/$(SERVICE)-$(RELEASE).zip
#   make bundle-beanstalk  the Elastic Beanstalk source bundle: dist/$(SERVICE)-$(RELEASE)-beanstalk.zip
#   make demo-beanstalk    v1 → v2 → v1 → broken v3 through a replay of the Beanstalk engine, and the
#                 platform's default nginx side by side: dist/demo-beanstalk.md
#   make bench    three restart strategies side by side under the same load: dist/bench.md, dist/bench.png
#   make bench-scale  a switch with 100 to 10,000 WebSockets and 10 to 1,000 keep-alive clients open: dist/scale.md
#   make test-systemd  the native and proxy switch under load against systemd 247, 252 and 257
#                 (debootstrap roots of bullseye and trixie, cached in /var/tmp), and the .deb in trixie
#   make fleet    8 hosts behind HAProxy deployed in waves (AllAtOnce, OneAtATime + load balancer): dist/fleet.md

RELEASE ?= dev
TARGET  := x86_64-unknown-linux-musl
CARGO   ?= cargo
export RELEASE

.PHONY: setup setup-build dist build static-aarch64 static test test-systemd demo demo-beanstalk fleet bench bench-scale bundle bundle-beanstalk fmt lint clean

# Everything the tests, demos and benchmarks run (real servers, HAProxy, nginx, load tools).
setup:
	scripts/setup test

# Only what building the hooks and the bundle needs (the musl target, a C toolchain, zip).
setup-build:
	scripts/setup build

build: setup
	$(CARGO) build --workspace --all-targets

# Static binaries for the bundle (RELEASE stamps the sample app's release id): what ships, for
# either architecture: handoff (the hooks, the CLI and the front), lint-bundle, beanstalk,
# deploy-local, and the sample app the bundle carries. Not the benchmarks' tools nor the front's
# own binary (handoff runs as the front): each binary here is linked with whole-program LTO, so
# every one left out is a link less. scripts/dist builds the same set, to find these artifacts.
# PROFILE=ci builds them as `make test` does (no LTO, into target/<arch>-unknown-linux-musl/ci).
export STATIC_PACKAGES := -p handoff -p handoff-rehearsal -p sample-app
PROFILE ?= release
export PROFILE
static: setup-build
	$(CARGO) build --profile $(PROFILE) --target $(TARGET) $(STATIC_PACKAGES) --bins

# The aarch64 (Graviton) build, linked by rust-lld (.cargo/config.toml): what the aarch64 switch
# test runs and the aarch64 packages hold.
static-aarch64: setup
	$(CARGO) build --profile $(PROFILE) --target aarch64-unknown-linux-musl $(STATIC_PACKAGES) --bins

# One build per architecture, with Cargo.toml's `ci` profile: the tests themselves are built for
# the musl target, so the static binaries the end-to-end tests deploy (target/<arch>-unknown-
# linux-musl/ci) share every dependency with them, and the aarch64 unit tests share theirs with
# the aarch64 build. `dist` packs and checks that build's artifacts of both architectures (into
# target/ci-dist; `make dist` packs the release build into dist/). One switch and the hooks' unit
# tests run the aarch64 build under qemu-user-static. qemu-user does not implement
# SO_ATTACH_REUSEPORT_CBPF (ENOPROTOOPT), so the takeover's steering test cannot run there.
# cargo-nextest runs each test in its own process, two at a time, and the tests that measure a
# switch's latency or carry the heaviest load alone (.config/nextest.toml).
TEST_BUILD := --profile ci --target $(TARGET)
test: setup
	$(CARGO) build $(TEST_BUILD) --workspace --all-targets
	$(CARGO) build --profile ci --target aarch64-unknown-linux-musl $(STATIC_PACKAGES) --bins
	scripts/setup dist
	PROFILE=ci DIST_OUT=target/ci-dist scripts/dist
	$(CARGO) nextest run --cargo-profile ci --target $(TARGET) --workspace --no-fail-fast
	$(CARGO) test $(TEST_BUILD) --workspace --doc
	$(CARGO) test --profile ci --target aarch64-unknown-linux-musl -p handoff -p handoff-rehearsal --lib -- \
	  --skip takeover::tests::a_plain_listener_is_joined_steered_and_its_queue_survives_its_close

# Not part of `make test` (CI): about 3 minutes more on a fresh machine, 1 with the roots cached (README, Tests).
test-systemd: build static dist
	scripts/test-systemd

bundle: static
	scripts/bundle

# Release artifacts for x86_64 and aarch64: tarballs, .deb, .rpm and SHA256SUMS in dist/.
dist:
	scripts/setup dist
	scripts/dist

# EB_PROXY=nginx (default: the bundle's nginx.conf listens on no port) or none (ProxyServer: none);
# EB_LISTEN (0.0.0.0:80): the service's socket.
bundle-beanstalk: bundle
	scripts/bundle-beanstalk

# Builds v1, v2, v3 (broken) and deploys them into a real-systemd sandbox under load; writes
# dist/demo.md and dist/demo.png; fails if any request failed or v2 does not serve at the end.
demo: setup
	scripts/demo

# The same releases deployed by a replay of the Elastic Beanstalk engine (scripts/eb-engine) from
# the platform hooks, under load; then the platform's default (nginx on the port, the app as
# web.service) through the same replay. Writes dist/demo-beanstalk.md; fails on any failed
# request of the hooks' run, v3 not rejected, or v1 not serving at the end.
demo-beanstalk: setup
	scripts/demo-beanstalk

# 8 hosts (real systemd sandboxes) behind a real HAProxy, deployed by the agent's lifecycle in
# waves under load through the balancer; writes dist/fleet.md and dist/fleet.png; fails on any
# failed request or health check, a broken release not rejected, or a host on the wrong release.
fleet: setup
	scripts/fleet

# (a) own port + restart, (b) socket activation + restart, (c) the hooks; same load and knobs.
bench: setup
	scripts/bench

# One switch at 100, 1,000 and 10,000 open WebSockets (three at the largest): reconnects, overflows.
bench-scale: setup
	scripts/bench-scale

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf dist
