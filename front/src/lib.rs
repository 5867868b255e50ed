//! handoff-front: a small reverse proxy that holds the systemd-owned listening
//! socket and forwards to the current release of the app on a loopback port.
//!
//! * [`route`]: the routes file, the current upstream, per-upstream client
//!   pools and in-flight/WebSocket counters; draining a previous release.
//! * [`proxy`]: request forwarding: streaming, the one retry, errors.
//! * [`headers`]: hop-by-hop and `X-Handoff-*` headers, removed at the hop.
//! * [`client`]: one client connection's facts and request timing.
//! * [`forwarded`]: `X-Forwarded-*` and `Forwarded`, kept from trusted proxies only;
//!   [`cidr`]: `--trusted-proxies` and the match of a peer against them.
//! * [`h2c`]: HTTP/2 with prior knowledge, from clients and (`--upstream h2c`) to the release.
//! * [`ws`]: the WebSocket relay and its close codes.
//! * [`metrics`]: the Prometheus metrics (`--metrics`); [`access_log`]: one JSON line per
//!   request (`--access-log`).
//! * [`control`]: the unix control socket (`route`, `status`).
//! * [`conn`]: accepting client connections, their timeouts and their part of
//!   the own drain.
//! * [`server`]: [`run`]: serve, then the front's own replacement (the drain contract of
//!   [`handoff_drain`], as the sample app follows it), [`Outcome`] and [`exit_code`].
//! * [`listen`]: inherited (`LISTEN_FDS`) or `--bind` sockets.
//! * [`config`]: flags with `HANDOFF_FRONT_*` environment fallbacks.
//!
//! [`entry`] is the process (the configuration, the sockets, the signal handlers, the exit
//! code); the `handoff-front` binary calls it, and so does `handoff` when a front unit starts it
//! under that name, so a revision needs no front binary of its own.

pub mod access_log;
pub mod cidr;
pub mod client;
pub mod config;
pub mod conn;
pub mod control;
pub mod entry;
pub mod forwarded;
pub mod h2c;
pub mod headers;
pub mod listen;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod server;
pub mod state;
pub mod ws;

pub use config::Config;
pub use server::{Outcome, UsageError, exit_code, run, run_on};
