//! Socket inheritance: the systemd socket-activation protocol (`sd_listen_fds(3)`).
//!
//! systemd passes listening sockets as fds 3, 4, … and describes them with
//! `LISTEN_FDS` (how many), `LISTEN_PID` (which process they are for) and
//! optionally `LISTEN_FDNAMES` (colon-separated names, `FileDescriptorName=`).
//!
//! The server is meant to run this way only. Without `LISTEN_FDS` it refuses to
//! start rather than silently binding a port of its own: a socket unit that has
//! gone `failed` must show up as a failed deploy, not as a process that looks
//! healthy while listening somewhere nobody connects to. `--bind` exists for
//! local runs and must be asked for explicitly.

use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
};

/// A listening socket ready to be served, with where it came from.
#[derive(Debug)]
pub struct Listener {
    /// The socket itself.
    pub listener: TcpListener,
    /// `LISTEN_FDNAMES` entry, or `bind` for `--bind` sockets.
    pub name: String,
    /// The fd number it had when inherited, if it was inherited.
    pub fd: Option<RawFd>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fd {
            Some(fd) => write!(f, "fd {fd} ({}) on {}", self.name, self.addr),
            None => write!(f, "{} (--bind)", self.addr),
        }
    }
}

/// Why no socket could be obtained. All of these mean "exit code 2".
#[derive(Debug, PartialEq, Eq)]
pub enum ListenError {
    /// `LISTEN_FDS` is not set at all: not started by systemd socket activation.
    NotActivated,
    /// `LISTEN_FDS` or `LISTEN_PID` is malformed or inconsistent.
    Invalid(String),
    /// The fds were passed, but none of them is a listening TCP socket.
    NoTcpListener(Vec<String>),
    /// Binding a `--bind` address failed.
    Bind(String),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HOW: &str = "sample-app only serves sockets passed by systemd socket activation \
             (a .socket unit sets LISTEN_FDS and LISTEN_PID); for a local run pass \
             --bind ADDR (or SAMPLE_BIND=ADDR)";
        match self {
            ListenError::NotActivated => write!(f, "no listening socket: LISTEN_FDS is not set; {HOW}"),
            ListenError::Invalid(why) => write!(f, "no usable listening socket: {why}; {HOW}"),
            ListenError::NoTcpListener(why) => write!(
                f,
                "no usable listening socket: none of the fds passed via LISTEN_FDS is a listening TCP socket ({}); {HOW}",
                why.join("; ")
            ),
            ListenError::Bind(why) => write!(f, "--bind: {why}"),
        }
    }
}

impl std::error::Error for ListenError {}

/// Explains why the socket-activation environment yields no socket. Pure, for testing.
///
/// The protocol itself (`LISTEN_PID` check, fds from 3, `LISTEN_FDNAMES`) is parsed by the
/// sd-notify crate, which answers "no sockets" in every one of these cases without saying
/// why; this names the reason, so the refusal to start tells the operator what is wrong.
pub fn diagnose(listen_fds: Option<&str>, listen_pid: Option<&str>, my_pid: u32) -> Result<(), ListenError> {
    let Some(fds) = listen_fds else {
        return Err(ListenError::NotActivated);
    };
    let count: u16 = fds
        .trim()
        .parse()
        .map_err(|_| ListenError::Invalid(format!("LISTEN_FDS={fds:?} is not a number")))?;
    let pid = listen_pid
        .ok_or_else(|| ListenError::Invalid(format!("LISTEN_FDS={count} is set but LISTEN_PID is not")))?;
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ListenError::Invalid(format!("LISTEN_PID={pid:?} is not a number")))?;
    if pid != my_pid {
        return Err(ListenError::Invalid(format!(
            "LISTEN_FDS={count} is meant for LISTEN_PID={pid}, but this process is pid {my_pid}"
        )));
    }
    if count == 0 {
        return Err(ListenError::Invalid("LISTEN_FDS=0".to_owned()));
    }
    Ok(())
}

/// Takes the listening TCP sockets systemd passed, and removes `LISTEN_FDS`,
/// `LISTEN_PID` and `LISTEN_FDNAMES` from the environment so that children do
/// not inherit them.
///
/// Fds that are not listening TCP sockets are skipped with a warning; if none
/// is left, this is an error.
///
/// # Safety
///
/// Must be called before any other thread exists (it modifies the environment),
/// and at most once (it takes ownership of the fds).
pub unsafe fn from_systemd() -> Result<Vec<Listener>, ListenError> {
    let get = |k: &str| std::env::var(k).ok();
    let diagnosis = diagnose(
        get("LISTEN_FDS").as_deref(),
        get("LISTEN_PID").as_deref(),
        std::process::id(),
    );
    // SAFETY: the caller guarantees there is only one thread.
    let passed = unsafe { sd_notify::listen_fds_with_names_and_unset_env() };
    diagnosis?;
    let passed: Vec<(RawFd, String)> = passed
        .map_err(|e| ListenError::Invalid(format!("LISTEN_* variables: {e}")))?
        .collect();
    let mut out = Vec::new();
    let mut rejected = Vec::new();
    for (fd, name) in passed {
        match check_tcp_listener(fd) {
            Ok(addr) => {
                // Don't leak the socket into anything we might exec.
                // SAFETY: systemd passed this fd to us; it is open (checked above).
                let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = fcntl(bfd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
                // SAFETY: the fd is a listening TCP socket we own from now on.
                let listener = unsafe { TcpListener::from_raw_fd(fd) };
                out.push(Listener {
                    listener,
                    name,
                    fd: Some(fd),
                    addr,
                });
            }
            Err(why) => {
                tracing::warn!(fd, name, "ignoring passed fd: {why}");
                rejected.push(format!("fd {fd} ({name}): {why}"));
            }
        }
    }
    if out.is_empty() {
        return Err(ListenError::NoTcpListener(rejected));
    }
    Ok(out)
}

/// Checks that `fd` is an open, listening TCP (IPv4/IPv6 stream) socket.
fn check_tcp_listener(fd: RawFd) -> Result<SocketAddr, String> {
    // SAFETY: we only query the fd; if it is not open, the calls fail with EBADF.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let ty = getsockopt(&bfd, sockopt::SockType).map_err(|e| format!("not a socket ({e})"))?;
    if ty != SockType::Stream {
        return Err(format!("socket type {ty:?}, not a stream socket"));
    }
    let addr: SockaddrStorage = getsockname(fd).map_err(|e| format!("getsockname: {e}"))?;
    let sa = match addr.family() {
        Some(AddressFamily::Inet) => addr.as_sockaddr_in().map(|a| SocketAddr::from(*a)),
        Some(AddressFamily::Inet6) => addr.as_sockaddr_in6().map(|a| SocketAddr::from(*a)),
        other => return Err(format!("address family {other:?}, not IPv4/IPv6")),
    }
    .ok_or_else(|| "unreadable socket address".to_owned())?;
    let listening = getsockopt(&bfd, sockopt::AcceptConn).map_err(|e| format!("SO_ACCEPTCONN: {e}"))?;
    if !listening {
        return Err(format!("TCP socket on {sa} is not listening"));
    }
    Ok(sa)
}

/// Binds `--bind` addresses (local runs).
pub fn bind(addrs: &[String]) -> Result<Vec<Listener>, ListenError> {
    let mut out = Vec::new();
    for spec in addrs {
        let resolved: Vec<SocketAddr> = spec
            .to_socket_addrs()
            .map_err(|e| ListenError::Bind(format!("{spec}: {e}")))?
            .collect();
        let first = resolved
            .first()
            .ok_or_else(|| ListenError::Bind(format!("{spec}: resolves to no address")))?;
        let listener = TcpListener::bind(first).map_err(|e| ListenError::Bind(format!("{spec}: {e}")))?;
        // The standard library listens with a backlog of 128: behind the front, a burst of
        // thousands of reconnecting WebSockets overflows it and the front's connects stall in
        // SYN retransmits. Listen again with the system's maximum, as the socket unit does.
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)
            .map_err(|e| ListenError::Bind(format!("{spec}: listen: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ListenError::Bind(format!("{spec}: {e}")))?;
        out.push(Listener {
            listener,
            name: "bind".to_owned(),
            fd: None,
            addr,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_activated_without_listen_fds() {
        assert_eq!(diagnose(None, Some("1"), 1), Err(ListenError::NotActivated));
        let msg = ListenError::NotActivated.to_string();
        assert!(msg.contains("LISTEN_FDS") && msg.contains("--bind"), "{msg}");
    }

    #[test]
    fn pid_must_match() {
        let e = diagnose(Some("1"), Some("41"), 42).unwrap_err();
        assert!(
            matches!(&e, ListenError::Invalid(m) if m.contains("LISTEN_PID=41")),
            "{e}"
        );
        let e = diagnose(Some("1"), None, 42).unwrap_err();
        assert!(
            matches!(&e, ListenError::Invalid(m) if m.contains("LISTEN_PID")),
            "{e}"
        );
    }

    #[test]
    fn malformed_or_zero() {
        assert!(matches!(
            diagnose(Some("x"), Some("1"), 1),
            Err(ListenError::Invalid(_))
        ));
        assert!(matches!(
            diagnose(Some("0"), Some("1"), 1),
            Err(ListenError::Invalid(_))
        ));
        assert!(matches!(
            diagnose(Some("1"), Some("y"), 1),
            Err(ListenError::Invalid(_))
        ));
    }

    #[test]
    fn a_well_formed_environment_passes() {
        assert_eq!(diagnose(Some("2"), Some("7"), 7), Ok(()));
    }

    #[test]
    fn check_accepts_only_listening_tcp() {
        use std::os::fd::AsRawFd;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            check_tcp_listener(l.as_raw_fd()).unwrap(),
            l.local_addr().unwrap()
        );
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let e = check_tcp_listener(c.as_raw_fd()).unwrap_err();
        assert!(e.contains("not listening"), "{e}");
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(
            check_tcp_listener(u.as_raw_fd())
                .unwrap_err()
                .contains("not a stream")
        );
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(
            check_tcp_listener(f.as_raw_fd())
                .unwrap_err()
                .contains("not a socket")
        );
    }
}
