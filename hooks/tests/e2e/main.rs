//! End-to-end tests against a real systemd (scripts/sandbox). They need root.

mod sandbox;
mod support;
