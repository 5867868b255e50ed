//! The listening sockets: inherited from systemd (`LISTEN_FDS`/`LISTEN_PID`,
//! parsed by the drain contract's [`handoff_drain::listen`] (the sample app's too), which the front reuses as
//! is), or bound with `--bind` for local runs and tests. No silent fallback:
//! without either the front refuses to start (exit 2).

use handoff_drain::listen::{self, ListenError};

use crate::server::UsageError;

const HOW: &str = "handoff-front serves the listening socket systemd passes (a .socket unit sets \
     LISTEN_FDS and LISTEN_PID); for a local run pass --bind ADDR (or HANDOFF_FRONT_BIND=ADDR)";

fn explain(e: ListenError) -> UsageError {
    UsageError(match e {
        ListenError::NotActivated => {
            format!("no listening socket: LISTEN_FDS and LISTEN_PID are not set; {HOW}")
        }
        ListenError::Invalid(why) => format!("no usable listening socket: {why}; {HOW}"),
        ListenError::NoTcpListener(why) => format!(
            "no usable listening socket: none of the fds passed via LISTEN_FDS is a listening TCP socket ({}); {HOW}",
            why.join("; ")
        ),
        ListenError::Bind(why) => format!("--bind: {why}"),
    })
}

/// The sockets to serve: `--bind` ones, or the inherited ones.
///
/// # Safety
///
/// Must be called before any other thread exists (reading the inherited
/// sockets modifies the environment), and at most once.
pub unsafe fn sockets(bind: &[String]) -> Result<Vec<listen::Listener>, UsageError> {
    let activated = std::env::var_os("LISTEN_FDS").is_some();
    if !bind.is_empty() {
        if activated {
            return Err(UsageError(
                "both LISTEN_FDS (socket activation) and --bind/HANDOFF_FRONT_BIND are set; use one".into(),
            ));
        }
        tracing::warn!(
            ?bind,
            "binding sockets myself (--bind): for local runs and tests only"
        );
        return listen::bind(bind).map_err(explain);
    }
    // SAFETY: guaranteed by the caller.
    unsafe { listen::from_systemd() }.map_err(explain)
}
