//! `app.before_switch` in deploy.yml: a command run in the new release before it starts
//! (migrations), as the operator writes it; [`crate::switch::before_switch`] runs it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

use crate::config::DeployConfig;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BeforeSwitch {
    /// The program: relative to the release directory, or absolute.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// How long it may run.
    #[serde(default = "default_timeout", deserialize_with = "crate::config::duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(300)
}

impl BeforeSwitch {
    pub fn validate(&self) -> Result<()> {
        let plain = Path::new(&self.command)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir));
        if self.command.is_empty()
            || !plain
            || self.command.contains(char::is_whitespace)
            || self.command.contains('\0')
        {
            bail!(
                "app.before_switch.command: '{}' must be a program inside the release (relative, without '..', e.g. \
                 .venv/bin/python) or an absolute path on the host (e.g. /bin/sh), without spaces; put arguments in \
                 app.before_switch.args",
                self.command
            );
        }
        if let Some(a) = self.args.iter().find(|a| a.contains('\0')) {
            bail!("app.before_switch.args: '{a}' contains a NUL byte; remove it");
        }
        let t = self.timeout;
        if t < Duration::from_secs(1) || t > Duration::from_secs(3600) {
            bail!(
                "app.before_switch.timeout: {} s is out of range; use between 1s and 1h, e.g. timeout: 5min",
                t.as_secs_f64()
            );
        }
        Ok(())
    }

    /// The program as systemd runs it for `release`.
    pub fn program(&self, cfg: &DeployConfig, release: &str) -> String {
        if Path::new(&self.command).is_absolute() {
            self.command.clone()
        } else {
            format!("{}/releases/{release}/{}", cfg.root().display(), self.command)
        }
    }

    /// The command line as an operator would type it, for messages.
    pub fn command_line(&self) -> String {
        std::iter::once(&self.command)
            .chain(&self.args)
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_' | '=' | ':' | ',' | '@'));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}
