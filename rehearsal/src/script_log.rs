//! `logs/scripts.log` of one deployment, written as the agent writes it: which lifecycle event
//! ran, which script, and every line the script printed on stdout or stderr, each line
//! time-stamped. It is where an operator looks after a failed deployment; the error names it.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::timestamp;

/// `logs/scripts.log`: every line a script printed, time-stamped, as the agent writes it.
pub struct ScriptLog {
    file: File,
}

impl ScriptLog {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { file })
    }

    fn write(&mut self, text: &str) {
        // One write per line, so an interrupted run leaves whole lines.
        let line = format!("[{}] {text}\n", timestamp(SystemTime::now()));
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            eprintln!("deploy-local: cannot write scripts.log: {e}");
        }
    }

    pub fn event(&mut self, event: &str) {
        self.write(&format!("LifecycleEvent - {event}"));
    }

    pub fn script(&mut self, location: &str) {
        self.write(&format!("Script - {location}"));
    }

    pub fn output(&mut self, stream: Stream, line: &str) {
        self.write(&format!("[{stream}]{line}"));
    }
}

/// Which of a script's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}
