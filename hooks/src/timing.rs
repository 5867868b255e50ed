//! Where a hook's time goes, measured by the hook itself.
//!
//! A hook spends most of its wall time waiting: on the app (its start until READY=1 and the
//! first healthy answer, the old instance's drain, health probes, the stability check), on
//! systemd (every D-Bus call and the jobs behind it), or on another deployment step that holds
//! the lock. What is left is the hook's own work: reading the revision, copying and syncing the
//! release, rendering units, writing the state. `cli::run_hook` prints the split as the hook's
//! last line:
//!
//! ```text
//! application-start: took 1512 ms: 1163 ms waiting on the app, 61 ms on systemd, 288 ms own work
//! ```
//!
//! Time is attributed to one kind at a time, the app first: a D-Bus call made while the app
//! is awaited (a start job until READY=1, a crash watch beside a probe) counts as the app's.
//! Guards mark the waits ([`waiting`]); they nest and may overlap (futures raced with
//! `select!`), and each one ends when dropped, also when its future is cancelled.

use std::panic::Location;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Own work at least this long between two waits is logged at debug level (`-v`), with where it
/// ran: the profile of a slow hook.
const OWN_STRETCH_LOGGED: Duration = Duration::from_millis(3);

/// What a hook waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The app: start until ready and answering, drain, probes, the stability check.
    App,
    /// systemd: a D-Bus call or the job it queued (when not waiting on the app).
    Systemd,
    /// Another deployment step that holds the lock.
    Lock,
}

const KINDS: [Wait; 3] = [Wait::App, Wait::Systemd, Wait::Lock];

fn index(kind: Wait) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

/// The split of one hook's wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Split {
    pub total: Duration,
    pub app: Duration,
    pub systemd: Duration,
    pub lock: Duration,
}

impl Split {
    /// The time not spent waiting: the hook's own work.
    pub fn own(&self) -> Duration {
        self.total.saturating_sub(self.app + self.systemd + self.lock)
    }

    /// "took N ms: A ms waiting on the app, S ms on systemd[, L ms on the lock], O ms own work"
    pub fn describe(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let lock = if self.lock.is_zero() {
            String::new()
        } else {
            format!(", {:.0} ms on another step's lock", ms(self.lock))
        };
        format!(
            "took {:.0} ms: {:.0} ms waiting on the app, {:.0} ms on systemd{lock}, {:.0} ms own work",
            ms(self.total),
            ms(self.app),
            ms(self.systemd),
            ms(self.own())
        )
    }
}

/// The attribution state: open waits per kind, time given to each kind so far.
#[derive(Debug)]
struct Clock {
    started: Instant,
    last: Instant,
    open: [u32; 3],
    spent: [Duration; 3],
    /// Where the current stretch of own work began: the end of the wait opened there (None:
    /// the hook's start).
    own_since: (Instant, Option<&'static Location<'static>>),
}

impl Clock {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            last: now,
            open: [0; 3],
            spent: [Duration::ZERO; 3],
            own_since: (now, None),
        }
    }

    fn waiting(&self) -> bool {
        self.open.iter().any(|n| *n > 0)
    }

    /// Gives the time since the last change to the kind that was open then (app first).
    fn advance(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.last);
        self.last = now;
        if let Some(i) = (0..KINDS.len()).find(|i| self.open[*i] > 0) {
            self.spent[i] += since;
        }
    }

    /// Opens a wait; returns the stretch of own work it ends, if there was one.
    fn open(&mut self, kind: Wait, now: Instant) -> Option<(Duration, Option<&'static Location<'static>>)> {
        let own =
            (!self.waiting()).then(|| (now.saturating_duration_since(self.own_since.0), self.own_since.1));
        self.advance(now);
        self.open[index(kind)] += 1;
        own
    }

    fn close(&mut self, kind: Wait, now: Instant, at: &'static Location<'static>) {
        self.advance(now);
        let n = &mut self.open[index(kind)];
        *n = n.saturating_sub(1);
        if !self.waiting() {
            self.own_since = (now, Some(at));
        }
    }

    fn split(&mut self, now: Instant) -> Split {
        if !self.waiting() {
            log_own_stretch(
                now.saturating_duration_since(self.own_since.0),
                self.own_since.1,
                "the hook's end",
            );
        }
        self.advance(now);
        Split {
            total: now.saturating_duration_since(self.started),
            app: self.spent[index(Wait::App)],
            systemd: self.spent[index(Wait::Systemd)],
            lock: self.spent[index(Wait::Lock)],
        }
    }
}

static CLOCK: Mutex<Option<Clock>> = Mutex::new(None);

fn with_clock<T>(f: impl FnOnce(&mut Clock, Instant) -> T) -> T {
    let now = Instant::now();
    let mut guard = CLOCK.lock().unwrap_or_else(|e| e.into_inner());
    let clock = guard.get_or_insert_with(|| Clock::new(now));
    f(clock, now)
}

/// Starts this process's clock (the first wait starts it otherwise).
pub fn start() {
    with_clock(|_, _| ());
}

/// The split so far.
pub fn split() -> Split {
    with_clock(|c, now| c.split(now))
}

/// A wait in progress; it ends when dropped.
#[must_use = "the wait ends when this guard is dropped"]
pub struct Waiting(Wait, &'static Location<'static>);

/// Marks a wait on `kind` until the guard is dropped. With `-v`, a stretch of own work of 3 ms
/// or more that this wait ends is logged with where it ran (from the end of the wait before).
#[track_caller]
pub fn waiting(kind: Wait) -> Waiting {
    let at = Location::caller();
    if let Some((own, since)) = with_clock(|c, now| c.open(kind, now)) {
        log_own_stretch(own, since, format_args!("the wait at {at}"));
    }
    Waiting(kind, at)
}

/// Logs (debug) a stretch of own work of [`OWN_STRETCH_LOGGED`] or more: from the end of the
/// wait opened at `since` (None: the hook's start) to `to`.
fn log_own_stretch(own: Duration, since: Option<&'static Location<'static>>, to: impl std::fmt::Display) {
    if own < OWN_STRETCH_LOGGED {
        return;
    }
    let since = since.map_or_else(|| "the start".to_string(), |l| format!("the wait at {l}"));
    tracing::debug!(
        "own work: {:.1} ms, from the end of {since} to {to}",
        own.as_secs_f64() * 1e3
    );
}

impl Drop for Waiting {
    fn drop(&mut self) {
        with_clock(|c, now| c.close(self.0, now, self.1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn time_goes_to_the_app_first_then_systemd_then_own_work() {
        let t0 = Instant::now();
        let mut c = Clock::new(t0);
        c.open(Wait::Systemd, t0 + ms(10)); // 10 ms own work
        c.open(Wait::App, t0 + ms(30)); // 20 ms systemd
        c.open(Wait::Systemd, t0 + ms(40)); // a D-Bus call while the app is awaited
        c.close(Wait::Systemd, t0 + ms(50), Location::caller());
        c.close(Wait::App, t0 + ms(130), Location::caller()); // 100 ms app
        c.close(Wait::Systemd, t0 + ms(135), Location::caller()); // 5 ms systemd
        let s = c.split(t0 + ms(200)); // 65 ms own work
        assert_eq!(s.total, ms(200));
        assert_eq!(s.app, ms(100));
        assert_eq!(s.systemd, ms(25));
        assert_eq!(s.lock, ms(0));
        assert_eq!(s.own(), ms(75));
        assert_eq!(
            s.describe(),
            "took 200 ms: 100 ms waiting on the app, 25 ms on systemd, 75 ms own work"
        );
    }

    #[test]
    fn a_stretch_of_own_work_is_told_where_it_began() {
        let t0 = Instant::now();
        let mut c = Clock::new(t0);
        assert_eq!(
            c.open(Wait::App, t0 + ms(7)),
            Some((ms(7), None)),
            "own work from the start"
        );
        assert_eq!(
            c.open(Wait::Systemd, t0 + ms(8)),
            None,
            "a wait inside a wait ends no own work"
        );
        c.close(Wait::Systemd, t0 + ms(9), Location::caller());
        let here = Location::caller();
        c.close(Wait::App, t0 + ms(10), here);
        assert_eq!(c.open(Wait::Lock, t0 + ms(25)), Some((ms(15), Some(here))));
    }

    #[test]
    fn overlapping_waits_of_one_kind_count_once() {
        let t0 = Instant::now();
        let mut c = Clock::new(t0);
        c.open(Wait::App, t0);
        c.open(Wait::App, t0 + ms(5)); // raced beside the first
        c.close(Wait::App, t0 + ms(20), Location::caller());
        c.close(Wait::App, t0 + ms(40), Location::caller());
        c.open(Wait::Lock, t0 + ms(40));
        c.close(Wait::Lock, t0 + ms(45), Location::caller());
        let s = c.split(t0 + ms(50));
        assert_eq!(s.app, ms(40));
        assert_eq!(s.lock, ms(5));
        assert_eq!(s.own(), ms(5));
        assert!(
            s.describe().contains("5 ms on another step's lock"),
            "{}",
            s.describe()
        );
    }
}
