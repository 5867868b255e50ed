//! The drain contract: what a process that serves the service's socket does when it is told
//! to stop (SIGTERM), so that a switch loses nothing. The sample app (native mode) and the
//! front (proxy mode) both follow it, with the pieces of this crate:
//!
//! 1. **Stop accepting at once**: close our copy of the listening socket; systemd and the
//!    successor hold theirs, so new connections queue for the successor.
//! 2. **Lame duck** ([`Phase::LameDuck`]): every response says `Connection: close`, so
//!    keep-alive clients leave after their current request. Closing an idle keep-alive
//!    connection ourselves would race with the client's next request on it.
//! 3. **First-request grace** ([`FirstRead`]): hyper closes a connection it has not read a
//!    byte from, even with the request already in the kernel buffer, so such a connection is
//!    not closed before its first byte or the grace.
//! 4. **Close** ([`Phase::Closing`]): in-flight requests finish; an idle keep-alive
//!    connection is held until the idle hold ends (a load balancer's idle timeout); once only
//!    idle connections are left the `STATUS=` line says so ([`IDLE_HOLD_STATUS`]) and the
//!    deploy hooks stop waiting. WebSockets get close 1012 at their turn ([`WsTurns`]),
//!    spread at a rate so the reconnects do not arrive all at once.
//! 5. **Exit** once nothing is open ([`Tracker`]), or drop what is left at the drain budget
//!    ([`Phase::Abort`]).
//!
//! [`drain`] runs these steps for both processes, over what each shows through [`Draining`];
//! [`accept_until_drain`] is their accept loop. [`listen`] takes the sockets systemd passes
//! (`LISTEN_FDS`), the start of it all; [`logging`] is how both log.

pub mod coordinator;
pub mod first_read;
pub mod listen;
pub mod logging;
pub mod pacing;
pub mod phase;
pub mod ws;

pub use coordinator::{
    Budget, Drained, Draining, Notifier, accept_until_drain, drain, draining_status, plural,
};
pub use first_read::{FirstByte, FirstRead, OnRead, ReadHook, first_read};
pub use pacing::{WsTurns, close_window};
pub use phase::{BusyCounter, IDLE_HOLD_STATUS, Open, Phase, Tracker, idle_hold_status};
