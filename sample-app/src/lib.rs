//! sample-app: a socket-activated HTTP + WebSocket server whose drain loses
//! nothing.
//!
//! * [`listen`]: takes the listening sockets systemd passes (`LISTEN_FDS`), or
//!   binds `--bind` addresses for local runs, and never silently falls back.
//! * [`drain`]: the shutdown coordinator, [`run`]; its documentation spells out
//!   the drain protocol step by step.
//! * [`http`]: one hyper connection per socket, routes, per-connection drain.
//! * [`ws`]: the WebSocket endpoint and its close-with-1012 drain.
//! * [`config`]: knobs (flags with environment fallbacks).
//! * [`state`]: identity, counters, and the drain's shared state ([`handoff_drain`]: the
//!   drain contract, shared with the front: phases, open connections, WebSocket close turns).
//!
//! The binary (`src/main.rs`) only parses the configuration, obtains the
//! sockets, installs signal handlers and maps the [`Outcome`] to an exit code,
//! so tests can run the whole server in-process with [`run`].

pub mod config;
pub mod drain;
pub mod http;
pub mod state;
pub mod ws;

/// Socket inheritance (`LISTEN_FDS`), shared with the front: [`handoff_drain::listen`].
pub use handoff_drain::listen;

pub use config::Config;
pub use drain::{DrainReport, Outcome, arm_hard_deadline, run};
pub use state::{BODY_LEN, IDLE_HOLD_STATUS, Open, fixed_body};
