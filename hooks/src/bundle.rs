//! The revision: what a bundle holds and how it is checked before the agent ever sees it.
//!
//! - [`appspec`] — appspec.yml as the agent reads it (its rules, its traps), and the
//!   [`appspec::Problem`]s every check reports;
//! - [`lint`] — `lint-bundle`: the whole revision (appspec, deploy.yml, units, symlinks, zip);
//! - [`timeouts`] — the appspec's hook timeouts against deploy.yml's deadlines;
//! - [`fit`] — the units against what the app is (a JIT, gunicorn, NonBlocking, the instance
//!   header);
//! - [`files`] — what of an app folder ships: default exclusions, `.handoffignore`, secrets
//!   refused;
//! - [`project`] — `handoff init` and `handoff bundle`: the hooks added to any app folder;
//! - [`appspec_merge`] — handoff's hooks merged into a team's appspec.yml, first in their
//!   events.

pub mod appspec;
pub mod appspec_merge;
pub mod files;
pub mod fit;
pub mod lint;
pub mod project;
pub mod timeouts;
