//! What kind of failure ended a hook, and so its exit code (decided here, in one place).

use std::fmt;

/// Exit codes of every hook and of `handoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The new release did not make it; the previous one serves (exit 1).
    Deployment,
    /// Bad input: config, bundle, arguments (exit 2).
    Input,
    /// The host: systemd unreachable, no rights, no disk space, lock held (exit 3).
    Environment,
    /// `handoff status`: the recorded release does not serve healthy (exit 1).
    Unhealthy,
}

/// A failure with its kind; found anywhere in an `anyhow` chain.
#[derive(Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub message: String,
}

impl Fault {
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn deployment(message: impl Into<String>) -> Self {
        Self {
            kind: FaultKind::Deployment,
            message: message.into(),
        }
    }
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            kind: FaultKind::Input,
            message: message.into(),
        }
    }
    pub fn environment(message: impl Into<String>) -> Self {
        Self {
            kind: FaultKind::Environment,
            message: message.into(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fault {}

/// The kind of an error: the first `Fault` in its chain (an explicit fault wins), else an
/// io error anywhere in the chain that only the host can fix ([`is_host_io`]) is
/// [`FaultKind::Environment`].
pub fn kind_of(err: &anyhow::Error) -> Option<FaultKind> {
    // `downcast_ref` finds a Fault attached as context too; the chain, one that is a source.
    if let Some(f) = err
        .downcast_ref::<Fault>()
        .or_else(|| err.chain().find_map(|e| e.downcast_ref::<Fault>()))
    {
        return Some(f.kind);
    }
    err.chain()
        .any(|e| {
            e.downcast_ref::<std::io::Error>().is_some_and(is_host_io)
                // nix's errors, as the io error they are.
                || e
                    .downcast_ref::<nix::errno::Errno>()
                    .is_some_and(|n| is_host_io(&std::io::Error::from(*n)))
        })
        .then_some(FaultKind::Environment)
}

/// An io error that the host must fix, never the release or its config: no space (ENOSPC) or
/// quota (EDQUOT), a read-only file system (EROFS), no rights (EACCES, EPERM), no memory
/// (ENOMEM).
pub fn is_host_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        StorageFull | ReadOnlyFilesystem | PermissionDenied | QuotaExceeded | OutOfMemory
    ) || e.raw_os_error().is_some_and(|n| {
        [
            nix::libc::ENOSPC,
            nix::libc::EDQUOT,
            nix::libc::EROFS,
            nix::libc::EACCES,
            nix::libc::EPERM,
            nix::libc::ENOMEM,
        ]
        .contains(&n)
    })
}

/// The exit code for an error (see [`kind_of`]): 2 bad input, 3 the host, else 1 (the
/// deployment failed and the previous release serves; for `handoff status`, the recorded
/// release does not serve healthy).
pub fn exit_code(err: &anyhow::Error) -> i32 {
    match kind_of(err) {
        Some(FaultKind::Input) => 2,
        Some(FaultKind::Environment) => 3,
        Some(FaultKind::Deployment | FaultKind::Unhealthy) | None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_follows_the_fault_through_context() {
        let e = Err::<(), _>(Fault::input("bad"))
            .context("while loading")
            .unwrap_err();
        assert_eq!(exit_code(&e), 2);
        assert_eq!(exit_code(&anyhow::Error::new(Fault::environment("x"))), 3);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), 1);
        assert_eq!(
            exit_code(&anyhow::Error::new(Fault::new(FaultKind::Unhealthy, "x"))),
            1
        );
    }

    fn io(errno: i32) -> anyhow::Error {
        Err::<(), _>(std::io::Error::from_raw_os_error(errno))
            .context("cannot write /opt/shop/state.json")
            .context("while switching")
            .unwrap_err()
    }

    #[test]
    fn host_io_errors_anywhere_in_the_chain_exit_3() {
        use nix::libc::*;
        for (errno, name) in [
            (ENOSPC, "ENOSPC"),
            (EROFS, "EROFS"),
            (EACCES, "EACCES"),
            (EPERM, "EPERM"),
            (EDQUOT, "EDQUOT"),
            (ENOMEM, "ENOMEM"),
        ] {
            assert_eq!(exit_code(&io(errno)), 3, "{name}");
            assert_eq!(kind_of(&io(errno)), Some(FaultKind::Environment), "{name}");
        }
        // By kind too, without an errno.
        for kind in [
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::ReadOnlyFilesystem,
            std::io::ErrorKind::PermissionDenied,
            std::io::ErrorKind::QuotaExceeded,
            std::io::ErrorKind::OutOfMemory,
        ] {
            let e = anyhow::Error::new(std::io::Error::new(kind, "x")).context("outer");
            assert_eq!(exit_code(&e), 3, "{kind:?}");
        }
    }

    #[test]
    fn nix_errors_are_classified_as_the_io_errors_they_are() {
        let e = Err::<(), _>(nix::errno::Errno::EROFS)
            .context("cannot lock")
            .unwrap_err();
        assert_eq!(exit_code(&e), 3);
        let e = Err::<(), _>(nix::errno::Errno::ESRCH)
            .context("cannot signal")
            .unwrap_err();
        assert_eq!(exit_code(&e), 1);
    }

    #[test]
    fn other_io_errors_stay_deployment_failures() {
        assert_eq!(exit_code(&io(nix::libc::ENOENT)), 1);
        assert_eq!(exit_code(&io(nix::libc::EIO)), 1);
        assert_eq!(kind_of(&io(nix::libc::ECONNREFUSED)), None);
    }

    #[test]
    fn an_explicit_fault_wins_over_an_io_error_in_the_chain() {
        let e = Err::<(), _>(std::io::Error::from_raw_os_error(nix::libc::ENOSPC))
            .context(Fault::input("the bundle is unreadable"))
            .unwrap_err();
        assert_eq!(exit_code(&e), 2);
        let e = Err::<(), _>(std::io::Error::from_raw_os_error(nix::libc::EACCES))
            .context(Fault::deployment("release d-2 did not take over"))
            .context("outer")
            .unwrap_err();
        assert_eq!(exit_code(&e), 1);
    }
}
