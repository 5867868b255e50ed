//! handoff: CodeDeploy lifecycle hooks that switch a service's releases behind one systemd
//! socket without refusing, resetting or stalling a request.
//!
//! The folder layout is the architecture:
//!
//! - [`lifecycle`] — the four hooks (ApplicationStop, BeforeInstall, ApplicationStart,
//!   ValidateService) and the operator's rollback;
//! - [`status`] — `handoff status`: a typed report (text or JSON) and whether the recorded
//!   release serves healthy;
//! - [`switch`] — the release switch itself: [`switch::native`] (start beside, confirm, drain
//!   the old), [`switch::proxy`] (`strategy: proxy`: private ports, the front's route and
//!   drain), [`switch::recovery`] (undo, recover, reconcile), [`switch::install`] (units and
//!   the socket), [`switch::takeover`] (the first deployment takes the port from the unit that
//!   serves it today), [`switch::before_switch`] (a command run in the new release before it
//!   starts);
//! - [`release`] — release folders under `/opt/<service>/releases`, and which one serves;
//!   [`links`] — symlinks in a revision (absolute ones kept, the host must have the target);
//!   [`durable`] — files written so a crash leaves the old or the new content;
//! - [`units`] — the socket, holder and instance units rendered from `units/`;
//! - [`systemd`] — a typed client for systemd over the system bus (zbus); [`platform`] — the
//!   host's systemd version against the settings the units use; [`arch`] — the CPU
//!   architecture of hosts and bundles;
//! - [`health`] — HTTP probes through the real port (reqwest);
//! - [`config`] — `deploy.yml`, with [`config::app_env`] (what the app gets from its host:
//!   environment files, credentials, writable directories) and [`config::before_switch`];
//!   [`span`] — durations written as systemd writes them;
//!   [`cidr`] — address ranges (`front.trusted_proxies`), the front's own; [`lock`] — one
//!   deployment step at a time;
//! - [`uninstall`] — the way back to the unit that served the port before the takeover;
//! - [`bundle`] — the revision: [`bundle::appspec`] as the agent reads it, [`bundle::lint`]
//!   (`lint-bundle`: the bundle's parts), [`bundle::timeouts`] against the deadlines,
//!   [`bundle::fit`] (its units against what the app is), [`bundle::files`] (what of an app
//!   folder ships), [`bundle::project`] (`handoff init` and `handoff bundle`: the hooks added to any
//!   app folder) and [`bundle::appspec_merge`] (the hooks merged into a team's appspec.yml);
//! - [`beanstalk`] — the same switch from Elastic Beanstalk's platform hooks (predeploy, postdeploy);
//! - [`cli`], [`fault`] — arguments, logging, and exit codes decided in one place;
//!   [`timing`] — where a hook's time goes (the app, systemd, its own work); [`date`] —
//!   calendar dates without a date crate.
//!
//! The local lifecycle runner (`deploy-local`) is a crate of its own, `handoff-rehearsal`.
pub mod arch;
pub mod beanstalk;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod date;
pub mod durable;
pub mod fault;
pub mod health;
pub mod lifecycle;
pub mod links;
pub mod lock;
pub mod platform;
pub mod release;
pub mod span;
pub mod status;
pub mod switch;
pub mod systemd;
pub mod timing;
pub mod uninstall;
pub mod units;

pub use handoff_front::cidr;
