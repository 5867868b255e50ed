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

use std::path::{Path, PathBuf};

use serde::Deserialize;

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

/// The major version in systemd's version string: "252.38-1~deb12u1" → 252, "219" → 219.
pub fn major_version(text: &str) -> Option<u32> {
    let digits: String = text
        .trim()
        .trim_start_matches('v')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
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

/// The CPU architectures the hooks are built for, as Rust, RPM and `uname -m` spell them
/// (Debian's `amd64` and `arm64` are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
pub enum Arch {
    #[serde(rename = "x86_64", alias = "amd64")]
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    #[serde(rename = "aarch64", alias = "arm64")]
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The architecture this program was built for, which is the host's when it runs.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The static build's folder for this architecture, from the workspace's `target/`.
    pub fn target_triple(self) -> String {
        format!("{}-unknown-linux-musl", self.name())
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an ELF file's header says its machine is: `None` for a file that is not ELF (a
/// script), `Some(Err(machine))` for an ELF of another machine than ours.
pub fn elf_arch(path: &Path) -> Option<Result<Arch, u16>> {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if head[..4] != *b"\x7fELF" {
        return None;
    }
    // e_machine, in the file's byte order (EI_DATA: 1 little, 2 big).
    let machine = if head[5] == 2 {
        u16::from_be_bytes([head[18], head[19]])
    } else {
        u16::from_le_bytes([head[18], head[19]])
    };
    Some(match machine {
        0x3e => Ok(Arch::X86_64),
        0xb7 => Ok(Arch::Aarch64),
        other => Err(other),
    })
}

fn describe(found: Result<Arch, u16>) -> String {
    match found {
        Ok(a) => a.to_string(),
        Err(m) => format!("ELF machine {m:#x}"),
    }
}

/// The executables of a bundle folder that are not of `arch`: its `hooks/` and, when it is
/// in the bundle, the app's command. Each comes with what it is.
pub fn foreign_executables(bundle: &Path, app_command: &str, arch: Arch) -> Vec<(PathBuf, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(bundle.join("hooks"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if !Path::new(app_command).is_absolute() {
        files.push(bundle.join(app_command));
    }
    files
        .into_iter()
        .filter_map(|p| match elf_arch(&p) {
            Some(found) if found != Ok(arch) => Some((p, describe(found))),
            _ => None,
        })
        .collect()
}

/// BeforeInstall: refuses a bundle made for another architecture than this host's (deploy.yml
/// `arch:`, or its executables), naming both.
pub fn check_arch(bundle: &Path, stated: Option<Arch>, app_command: &str) -> Result<(), String> {
    let host = Arch::host();
    if let Some(stated) = stated
        && stated != host
    {
        return Err(format!(
            "deploy.yml says arch: {stated}, but this host is {host}: deploy this revision to the {stated} hosts' \
             deployment group, or bundle one for {host} (`handoff bundle --arch {host}`)"
        ));
    }
    let foreign = foreign_executables(bundle, app_command, host);
    if foreign.is_empty() {
        return Ok(());
    }
    let list = foreign
        .iter()
        .map(|(p, what)| format!("{} is {what}", p.strip_prefix(bundle).unwrap_or(p).display()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(format!(
        "this host is {host}, but the revision's executables are not: {list}; bundle it for {host} \
         (`handoff bundle --arch {host}`, and the app built for {host}), or deploy it to hosts of that architecture"
    ))
}

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

    fn elf(path: &Path, machine: u16) {
        let mut head = vec![0u8; 64];
        head[..4].copy_from_slice(b"\x7fELF");
        head[4] = 2; // 64-bit
        head[5] = 1; // little-endian
        head[18..20].copy_from_slice(&machine.to_le_bytes());
        std::fs::write(path, head).unwrap();
    }

    #[test]
    fn tells_the_architecture_of_executables_and_refuses_a_foreign_bundle() {
        let dir = std::env::temp_dir().join(format!("handoff-arch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hooks")).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let host = Arch::host();
        let other = if host == Arch::X86_64 {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        let machine = |a: Arch| if a == Arch::X86_64 { 0x3e } else { 0xb7 };
        elf(&dir.join("hooks/before-install"), machine(host));
        std::fs::write(dir.join("hooks/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::write(dir.join("bin/server"), "#!/bin/sh\n").unwrap();
        assert_eq!(elf_arch(&dir.join("hooks/before-install")), Some(Ok(host)));
        assert_eq!(elf_arch(&dir.join("hooks/run.sh")), None);
        assert!(check_arch(&dir, None, "bin/server").is_ok());
        assert!(check_arch(&dir, Some(host), "bin/server").is_ok());

        let e = check_arch(&dir, Some(other), "bin/server").unwrap_err();
        assert!(
            e.contains(&format!("deploy.yml says arch: {other}, but this host is {host}")),
            "{e}"
        );

        elf(&dir.join("bin/server"), machine(other));
        let e = check_arch(&dir, None, "bin/server").unwrap_err();
        assert!(
            e.contains(&format!("this host is {host}")) && e.contains(&format!("bin/server is {other}")),
            "{e}"
        );
        // An absolute command is the host's own: not looked at.
        assert!(check_arch(&dir, None, "/usr/bin/gunicorn").is_ok());
        elf(&dir.join("hooks/odd"), 0x28);
        let e = check_arch(&dir, None, "/usr/bin/gunicorn").unwrap_err();
        assert!(e.contains("hooks/odd is ELF machine 0x28"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
