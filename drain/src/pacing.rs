//! WebSocket closes spread over a window at a rate, so that the reconnects reach the successor
//! at a rate its accept queue holds instead of all in one millisecond.

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until};

/// How long `open` WebSocket closes take at `rate` per second, within `at_most` (rate 0: at
/// once).
pub fn close_window(open: u64, rate: u64, at_most: Duration) -> Duration {
    if rate == 0 || open == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(open * 1000 / rate).min(at_most)
    }
}

/// The drain's WebSocket closes as turns handed out at a rate. Every WebSocket queues for its
/// turn from the moment it opens (first come, first served); at the drain [`WsTurns::hand_out`]
/// gives out the turns evenly over the close window, then lets every WebSocket go.
///
/// Only the WebSocket whose turn has come wakes up. With each WebSocket watching the drain's
/// phase and computing its own delay, 10,000 of them woke in the same instant the closes
/// began: the old instance took both cores, and the successor's new connections waited
/// (`make bench-scale` at 10,000 WebSockets: the probe's p99 in the switches was 8.3 ms
/// against 2.9 ms steady; with the turns, 4.3–5.8 ms against 1.3–1.6 ms).
#[derive(Debug)]
pub struct WsTurns {
    turns: Semaphore,
}

impl Default for WsTurns {
    fn default() -> Self {
        Self {
            turns: Semaphore::new(0),
        }
    }
}

impl WsTurns {
    /// Resolves at this WebSocket's turn to close. Keep the future across polls: its place
    /// in the queue is taken at its first poll.
    pub async fn wait(&self) {
        // Err: the semaphore is closed, every turn has been given.
        if let Ok(permit) = self.turns.acquire().await {
            permit.forget();
        }
    }

    /// Gives out `open` turns evenly over `window` (the n-th at n/open of it), then every turn.
    pub async fn hand_out(&self, open: u64, window: Duration) {
        let start = Instant::now();
        for n in 0..open {
            if !window.is_zero() {
                sleep_until(start + window.mul_f64(n as f64 / open as f64)).await;
            }
            self.turns.add_permits(1);
        }
        self.turns.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_close_window_is_the_rate_within_the_budget() {
        assert_eq!(
            close_window(10_000, 2_000, Duration::from_secs(8)),
            Duration::from_secs(5)
        );
        // More than the budget allows: faster, never later than the budget.
        assert_eq!(
            close_window(100_000, 2_000, Duration::from_secs(8)),
            Duration::from_secs(8)
        );
        // Rate 0: all at once.
        assert_eq!(close_window(10, 0, Duration::from_secs(8)), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn websocket_turns_come_one_at_a_time_at_the_rate_then_all_at_once() {
        let turns = Arc::new(WsTurns::default());
        let start = Instant::now();
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let turns = turns.clone();
                tokio::spawn(async move {
                    turns.wait().await;
                    start.elapsed()
                })
            })
            .collect();
        // Nobody's turn before the drain hands them out.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        let drain = Instant::now();
        turns.hand_out(100, Duration::from_secs(1)).await;
        let mut at = Vec::new();
        for w in waiters {
            at.push(w.await.unwrap() - (drain - start));
        }
        at.sort();
        assert_eq!(at[0], Duration::ZERO);
        assert_eq!(at[50], Duration::from_millis(500));
        assert_eq!(at[99], Duration::from_millis(990));
        // A WebSocket that was not counted goes at once once every turn is out.
        tokio::time::timeout(Duration::from_millis(1), turns.wait())
            .await
            .expect("the turns are all given");
    }
}
