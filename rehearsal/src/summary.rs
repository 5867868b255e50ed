//! What a deployment reports: each lifecycle event in order with what it did ([`Outcome`]) and
//! how long it took — scripts run, skipped on a first deployment, or the agent's own step —
//! printed by `deploy-local` when the deployment succeeds.

use std::fmt;
use std::time::Duration;

use crate::Layout;

/// What one lifecycle event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Ran this many scripts, all successfully.
    Ran(usize),
    /// The appspec lists no scripts for it.
    NoScripts,
    /// A previous-revision event on the group's first deployment.
    FirstDeployment,
    /// An agent step, and what it did.
    Done(String),
}

/// One lifecycle event, done.
#[derive(Debug, Clone)]
pub struct Step {
    pub event: &'static str,
    pub outcome: Outcome,
    pub took: Duration,
}

/// A deployment that succeeded.
#[derive(Debug, Clone)]
pub struct Summary {
    pub deployment_id: String,
    pub layout: Layout,
    pub steps: Vec<Step>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.outcome {
            Outcome::Ran(1) => "1 script".to_string(),
            Outcome::Ran(n) => format!("{n} scripts"),
            Outcome::NoScripts => "no scripts".to_string(),
            Outcome::FirstDeployment => "skipped: first deployment of the group".to_string(),
            Outcome::Done(what) => what.clone(),
        };
        write!(f, "{:<20} {:>8.2} s  {what}", self.event, self.took.as_secs_f64())
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "deployment {} succeeded", self.deployment_id)?;
        for s in &self.steps {
            writeln!(f, "  {s}")?;
        }
        writeln!(f, "archive: {}", self.layout.archive.display())?;
        writeln!(f, "log:     {}", self.layout.scripts_log.display())
    }
}
