//! The agent's names for time and deployments: the time stamps of scripts.log, and new
//! deployment ids in the agent's form (`d-` and 9 letters or digits). The id names the
//! deployment's folder under the deployment root and, through `DEPLOYMENT_ID`, the release
//! the hooks create.

use std::fs::File;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// `YYYY-MM-DD HH:MM:SS.mmm`, UTC.
pub fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (y, mo, d) = handoff::date::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// A deployment id like the agent's: `d-` and 9 uppercase letters or digits.
pub fn new_deployment_id() -> Result<String> {
    const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut urandom = File::open("/dev/urandom").context("cannot open /dev/urandom")?;
    let mut id = String::from("d-");
    while id.len() < 11 {
        let mut bytes = [0u8; 16];
        urandom.read_exact(&mut bytes)?;
        // 252 = 7 × 36: below it, every character is equally likely.
        for b in bytes.into_iter().filter(|b| *b < 252) {
            if id.len() < 11 {
                id.push(ALPHABET[usize::from(b % 36)] as char);
            }
        }
    }
    Ok(id)
}

#[cfg(test)]
mod tests;
