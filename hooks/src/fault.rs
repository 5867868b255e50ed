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

/// The kind of the first `Fault` in an error's chain.
pub fn kind_of(err: &anyhow::Error) -> Option<FaultKind> {
    err.chain()
        .find_map(|e| e.downcast_ref::<Fault>())
        .map(|f| f.kind)
}

/// The exit code for an error: the kind of the first `Fault` in its chain, else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    match kind_of(err) {
        Some(FaultKind::Input) => 2,
        Some(FaultKind::Environment) => 3,
        Some(FaultKind::Deployment) | None => 1,
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
    }
}
