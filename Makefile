# handoff: zero-downtime CodeDeploy releases behind a systemd socket.
#
#   make demo     the main job: builds everything and deploys releases locally (see README)
#   make test     unit tests and end-to-end tests against a real systemd (needs root)
#   make bundle   the revision zip: dist/$(SERVICE)-$(RELEASE).zip

RELEASE ?= dev
TARGET  := x86_64-unknown-linux-musl
CARGO   ?= cargo
export RELEASE

.PHONY: setup build static test demo bundle fmt lint clean

setup:
	scripts/setup

build: setup
	$(CARGO) build --workspace --all-targets

# Static binaries for the bundle (RELEASE stamps the sample app's release id).
static: setup
	$(CARGO) build --release --target $(TARGET) --workspace --bins

test: build
	$(CARGO) test --workspace --no-fail-fast

bundle: static
	scripts/bundle

demo: bundle

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf dist
