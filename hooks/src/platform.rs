//! The host's systemd against what the rendered units ask of it.
//!
//! systemd ignores a unit-file setting it does not know ("Unknown key name 'ProtectProc' in
//! section 'Service', ignoring"): a unit that asks for `ProtectProc=invisible` on systemd 239
//! starts anyway, without that protection, and one that asks for `LoadCredential=` starts
//! without its secrets. So BeforeInstall reads the host's version (the manager's `Version`
//! property) and compares it with the version that brought each setting the rendered units
//! use ([`SINCE`], from systemd's manual pages: "Added in version N"), and refuses a host that
//! lacks one before anything changes, naming the settings, the distributions that ship the
//! host's version, and the fix.
//!
//! The same goes for the CPU: a bundle carries executables of one architecture ([`Arch`]),
//! which deploy.yml may state (`arch: aarch64`). `handoff bundle` packs the hooks of the
//! architecture asked for, lint-bundle refuses a bundle whose executables disagree with each
//! other or with `arch:`, and BeforeInstall refuses a host of another architecture than the
//! bundle's, naming both.

use crate::units::Rendered;

/// Test fault injection: BeforeInstall takes this as the host's systemd version (a host
/// older than the one the tests run on). Never set in production.
pub const TEST_VERSION_ENV: &str = "HANDOFF_TEST_SYSTEMD_VERSION";

/// Settings (a key, or a key and the start of its value) and the systemd version that
/// brought them: each setting's "Added in version N" in systemd's manual pages, and NEWS for
/// values (`Type=exec`: 240) and for what a setting gives the app (`StateDirectory=` came in
/// 235, its `$STATE_DIRECTORY` in 240). Only settings newer than the oldest systemd still in
/// wide use (219, Amazon Linux 2) are listed; a key and value pair comes before its bare key.
pub const SINCE: &[(&str, u32)] = &[
    ("Type=exec", 240),
    ("StandardOutput=append:", 240),
    ("StandardError=append:", 240),
    ("StandardOutput=file:", 236),
    ("StandardError=file:", 236),
    ("LoadCredential=", 247),
    ("SetCredential=", 247),
    ("ProtectProc=", 247),
    ("ProcSubset=", 247),
    ("ProtectClock=", 245),
    ("LogRateLimitIntervalSec=", 240),
    ("ProtectKernelLogs=", 244),
    ("ExecCondition=", 243),
    ("ProtectHostname=", 242),
    ("RestrictSUIDSGID=", 242),
    // The app reads $STATE_DIRECTORY and friends (240), not only the folder (235; the runtime
    // folder: 211).
    ("StateDirectory=", 240),
    ("CacheDirectory=", 240),
    ("LogsDirectory=", 240),
    ("RuntimeDirectory=", 240),
    ("SystemCallFilter=@system-service", 239),
    ("ProtectHome=tmpfs", 238),
    ("RuntimeDirectoryPreserve=", 235),
    ("LockPersonality=", 235),
    ("RestrictNamespaces=", 233),
    ("DynamicUser=", 232),
    ("ProtectSystem=strict", 232),
    ("ProtectKernelModules=", 232),
    ("ProtectKernelTunables=", 232),
    ("ProtectControlGroups=", 232),
    ("PrivateUsers=", 232),
    ("RemoveIPC=", 232),
    ("RestrictRealtime=", 231),
    ("MemoryDenyWriteExecute=", 231),
    ("StartLimitIntervalSec=", 229),
    ("AmbientCapabilities=", 229),
    ("FileDescriptorName=", 227),
];

/// The distributions that ship a systemd version (their release's own; back-ports keep it).
const SHIPPED_BY: &[(u32, &str)] = &[
    (219, "Amazon Linux 2"),
    (239, "RHEL 8, Rocky Linux 8, AlmaLinux 8"),
    (245, "Ubuntu 20.04"),
    (247, "Debian 11"),
    (249, "Ubuntu 22.04"),
    (252, "Amazon Linux 2023, RHEL 9, Debian 12"),
    (255, "Ubuntu 24.04"),
    (257, "Debian 13"),
];

/// One setting the units use and the version that brought it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// As written in [`SINCE`]: `ProtectProc=` or `Type=exec`.
    pub setting: &'static str,
    pub since: u32,
    /// The unit that uses it.
    pub unit: String,
}

/// Every listed setting the units use, newest first (one entry per setting).
pub fn needs(units: &[Rendered]) -> Vec<Need> {
    let mut found: Vec<Need> = Vec::new();
    for unit in units {
        for line in unit.text.lines().map(str::trim) {
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some(&(setting, since)) = SINCE.iter().find(|(s, _)| line.starts_with(s)) else {
                continue;
            };
            if !found.iter().any(|n| n.setting == setting) {
                found.push(Need {
                    setting,
                    since,
                    unit: unit.name.clone(),
                });
            }
        }
    }
    found.sort_by(|a, b| b.since.cmp(&a.since).then(a.setting.cmp(b.setting)));
    found
}

/// The distributions known to ship `version`, if any.
pub fn shipped_by(version: u32) -> Option<&'static str> {
    SHIPPED_BY.iter().find(|(v, _)| *v == version).map(|(_, d)| *d)
}

/// Refuses a host whose systemd (`host`) is older than a setting the units use; the message
/// names the settings, the host's likely distribution and the fix.
pub fn check(host: u32, units: &[Rendered]) -> Result<(), String> {
    let missing: Vec<Need> = needs(units).into_iter().filter(|n| n.since > host).collect();
    let Some(newest) = missing.first().map(|n| n.since) else {
        return Ok(());
    };
    let list = missing
        .iter()
        .map(|n| format!("{} ({}, in {})", n.setting, n.since, n.unit))
        .collect::<Vec<_>>()
        .join(", ");
    let host_is = match shipped_by(host) {
        Some(d) => format!("systemd {host} (the version of {d})"),
        None => format!("systemd {host}"),
    };
    let newer: Vec<&str> = SHIPPED_BY
        .iter()
        .filter(|(v, _)| *v >= newest)
        .map(|(_, d)| *d)
        .collect();
    // Only ProtectProc= and ProcSubset= missing (systemd 245, 246): app.needs: [proc] leaves
    // them out.
    let relaxation = if missing
        .iter()
        .all(|n| crate::units::PROC_SETTINGS.contains(&n.setting))
    {
        format!(
            "; or, to keep this host, leave them out with `app.needs: [proc]` in deploy.yml: the app then sees \
             the host's processes in /proc, and `systemd-analyze security` rates the instance unit {PROC_COST}"
        )
    } else {
        String::new()
    };
    Err(format!(
        "this host runs {host_is}, but the units use settings it does not know: {list}. systemd would ignore \
         them and run the app without them (less protection, or no credentials). Deploy to hosts with systemd \
         {newest} or newer ({}){relaxation}",
        newer.join("; ")
    ))
}

/// What `app.needs: [proc]` costs on `systemd-analyze security`'s exposure scale (0 to 10,
/// lower is safer), measured on the shipped instance unit, running, in the e2e tests
/// (`platform::a_host_whose_systemd_lacks_…`).
pub const PROC_COST: &str = "1.2 instead of 1.1";

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, text: &str) -> Rendered {
        Rendered {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn reads_the_major_version() {
        use crate::systemd::major_version;
        assert_eq!(major_version("252.38-1~deb12u1"), Some(252));
        assert_eq!(major_version("219"), Some(219));
        assert_eq!(major_version("249.11-0ubuntu3.12"), Some(249));
        assert_eq!(major_version("v257.13"), Some(257));
        assert_eq!(major_version("unknown"), None);
    }

    #[test]
    fn finds_settings_and_values_newest_first() {
        let units = [
            unit(
                "shop@.service",
                "[Service]\nType=notify\nProtectProc=invisible\n# LoadCredential=x\nProtectSystem=strict\n\
                 StandardOutput=append:/opt/shop/logs/x.log\n",
            ),
            unit(
                "shop.socket",
                "[Socket]\nListenStream=127.0.0.1:80\nFileDescriptorName=http\n",
            ),
        ];
        let n: Vec<(&str, u32)> = needs(&units).iter().map(|n| (n.setting, n.since)).collect();
        assert_eq!(
            n,
            [
                ("ProtectProc=", 247),
                ("StandardOutput=append:", 240),
                ("ProtectSystem=strict", 232),
                ("FileDescriptorName=", 227),
            ]
        );
        // Type=notify is old; Type=exec is not.
        assert!(needs(&[unit("a.service", "Type=exec\n")])[0].since == 240);
        // The app reads $RUNTIME_DIRECTORY (240); the Preserve= key is not the folder's.
        let runtime = needs(&[unit(
            "a.service",
            "RuntimeDirectory=shop\nRuntimeDirectoryPreserve=yes\n",
        )]);
        let runtime: Vec<(&str, u32)> = runtime.iter().map(|n| (n.setting, n.since)).collect();
        assert_eq!(
            runtime,
            [("RuntimeDirectory=", 240), ("RuntimeDirectoryPreserve=", 235)]
        );
    }

    #[test]
    fn refuses_an_older_host_naming_settings_distribution_and_fix() {
        let units = [unit(
            "shop@.service",
            "Type=exec\nProtectProc=invisible\nProcSubset=pid\nLockPersonality=yes\n",
        )];
        assert!(check(247, &units).is_ok());
        assert!(check(252, &units).is_ok());
        let e = check(239, &units).unwrap_err();
        assert!(e.contains("systemd 239 (the version of RHEL 8"), "{e}");
        assert!(
            e.contains("ProcSubset= (247, in shop@.service), ProtectProc= (247"),
            "{e}"
        );
        assert!(e.contains("Type=exec (240"), "{e}");
        assert!(
            e.contains("systemd 247 or newer (Debian 11; Ubuntu 22.04; Amazon Linux 2023"),
            "{e}"
        );
        assert!(!e.contains("app.needs: [proc]"), "more is missing than proc: {e}");
        let e = check(219, &units).unwrap_err();
        assert!(
            e.contains("Amazon Linux 2)") && e.contains("Type=exec (240"),
            "{e}"
        );
        // Ubuntu 20.04 lacks only the /proc settings: the relaxation is named, with its cost.
        let e = check(245, &units).unwrap_err();
        assert!(e.contains("(the version of Ubuntu 20.04)"), "{e}");
        assert!(e.contains("`app.needs: [proc]`") && e.contains(PROC_COST), "{e}");
    }
}
