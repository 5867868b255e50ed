//! handoff: CodeDeploy lifecycle hooks that switch releases behind a systemd socket.
pub mod config;
pub mod systemd;
