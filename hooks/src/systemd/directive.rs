//! The settings of a transient service ([`Directive`]), each named after the unit-file
//! directive it stands for, and their D-Bus form for `StartTransientUnit`.

use std::time::Duration;

use zbus::Variant;

/// One setting of a transient service, named after the unit-file directive it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    /// A yes/no directive (`PrivateTmp=yes`).
    Flag(&'static str, bool),
    /// A directive with one value (`ProtectSystem=strict`).
    Text(&'static str, String),
    /// A directive with a list of values (`StateDirectory=myapp`, `Environment=A=1 B=2`).
    Words(&'static str, Vec<String>),
    /// `ExecStart=:` (the program first): arguments reach it as written, without systemd's
    /// `$VAR` expansion (systemd >= 243).
    ExecStart(Vec<String>),
    /// `EnvironmentFile=` lines, in order: (path, optional).
    EnvironmentFiles(Vec<(String, bool)>),
    /// `LoadCredential=name:path` lines (systemd >= 247).
    LoadCredential(Vec<(String, String)>),
    TimeoutStartSec(Duration),
    /// `LimitNOFILE=n` (soft = hard).
    LimitNofile(u64),
    UMask(u32),
    /// `CapabilityBoundingSet=` or `AmbientCapabilities=` with nothing in it.
    NoCapabilities(&'static str),
    /// `RestrictNamespaces=yes`.
    RestrictNamespaces,
    /// `RestrictAddressFamilies=` (an allow list).
    RestrictAddressFamilies(Vec<String>),
    /// `SystemCallFilter=` (`~`: a deny list when `allow` is false).
    SystemCallFilter {
        allow: bool,
        calls: Vec<String>,
    },
    SystemCallErrorNumber(nix::errno::Errno),
    /// `StandardOutput=file:<path>`.
    StandardOutputFile(String),
}

impl Directive {
    /// The unit-file lines it stands for.
    pub fn lines(&self) -> Vec<String> {
        let yes = |b: bool| if b { "yes" } else { "no" };
        match self {
            Directive::Flag(name, b) => vec![format!("{name}={}", yes(*b))],
            Directive::Text(name, v) => vec![format!("{name}={v}")],
            Directive::Words(name, v) => vec![format!("{name}={}", v.join(" "))],
            Directive::ExecStart(argv) => vec![format!(
                "ExecStart=:{}",
                argv.iter()
                    .map(|a| if a.contains(char::is_whitespace) || a.is_empty() {
                        format!("{a:?}")
                    } else {
                        a.clone()
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            )],
            Directive::EnvironmentFiles(files) => files
                .iter()
                .map(|(p, optional)| format!("EnvironmentFile={}{p}", if *optional { "-" } else { "" }))
                .collect(),
            Directive::LoadCredential(creds) => creds
                .iter()
                .map(|(name, path)| format!("LoadCredential={name}:{path}"))
                .collect(),
            Directive::TimeoutStartSec(d) => vec![format!("TimeoutStartSec={}ms", d.as_millis())],
            Directive::LimitNofile(n) => vec![format!("LimitNOFILE={n}")],
            Directive::UMask(m) => vec![format!("UMask={m:04o}")],
            Directive::NoCapabilities(name) => vec![format!("{name}=")],
            Directive::RestrictNamespaces => vec!["RestrictNamespaces=yes".into()],
            Directive::RestrictAddressFamilies(v) => vec![format!("RestrictAddressFamilies={}", v.join(" "))],
            Directive::SystemCallFilter { allow, calls } => vec![format!(
                "SystemCallFilter={}{}",
                if *allow { "" } else { "~" },
                calls.join(" ")
            )],
            Directive::SystemCallErrorNumber(e) => vec![format!("SystemCallErrorNumber={e:?}")],
            Directive::StandardOutputFile(p) => vec![format!("StandardOutput=file:{p}")],
        }
    }

    /// The properties `StartTransientUnit` takes for it (see systemd's org.freedesktop.systemd1(5)).
    pub(super) fn properties(&self) -> Vec<(&'static str, Variant<'static>)> {
        let owned = |v: &[String]| v.to_vec();
        match self {
            Directive::Flag(name, b) => vec![(*name, Variant::from(*b))],
            Directive::Text(name, v) => vec![(*name, Variant::from(v.clone()))],
            Directive::Words(name, v) => vec![(*name, Variant::from(owned(v)))],
            Directive::ExecStart(argv) => {
                let program = argv.first().cloned().unwrap_or_default();
                let flags = vec!["no-env-expand".to_string()];
                vec![("ExecStartEx", Variant::from(vec![(program, owned(argv), flags)]))]
            }
            Directive::EnvironmentFiles(files) => vec![("EnvironmentFiles", Variant::from(files.clone()))],
            Directive::LoadCredential(creds) => vec![("LoadCredential", Variant::from(creds.clone()))],
            Directive::TimeoutStartSec(d) => vec![("TimeoutStartUSec", Variant::from(d.as_micros() as u64))],
            Directive::LimitNofile(n) => vec![
                ("LimitNOFILE", Variant::from(*n)),
                ("LimitNOFILESoft", Variant::from(*n)),
            ],
            Directive::UMask(m) => vec![("UMask", Variant::from(*m))],
            Directive::NoCapabilities(name) => vec![(*name, Variant::from(0u64))],
            // The allowed namespace types: none.
            Directive::RestrictNamespaces => vec![("RestrictNamespaces", Variant::from(0u64))],
            Directive::RestrictAddressFamilies(v) => {
                vec![("RestrictAddressFamilies", Variant::from((true, owned(v))))]
            }
            Directive::SystemCallFilter { allow, calls } => {
                vec![("SystemCallFilter", Variant::from((*allow, owned(calls))))]
            }
            Directive::SystemCallErrorNumber(e) => vec![("SystemCallErrorNumber", Variant::from(*e as i32))],
            Directive::StandardOutputFile(p) => vec![("StandardOutputFile", Variant::from(p.clone()))],
        }
    }
}
