//! The CPU architecture of the hosts and of the executables in a bundle: a bundle built for
//! x86_64 must not reach an arm64 (Graviton) host, and the other way round.

use std::path::{Path, PathBuf};

use serde::Deserialize;

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
