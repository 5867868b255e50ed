use super::*;
use crate::bundle::appspec::tests::GOOD;

// --- bundles on disk -----------------------------------------------------------------

fn exec(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Unit templates of the shape the hooks render, fixed here so that these tests do not
/// follow edits of the repository's units/ (the first test checks those).
const UNITS: [(&str, &str); 3] = [
    (
        "app.socket",
        "[Socket]\n{{listen_streams}}\nService={{service}}-hold.service\nFileDescriptorName=http\n\n\
             [Install]\nWantedBy=sockets.target\n",
    ),
    (
        "app-hold.service",
        "[Service]\nType=oneshot\nExecStart=/bin/true\nRemainAfterExit=yes\n",
    ),
    (
        "app@.service",
        "[Unit]\nStartLimitIntervalSec=0\n\n[Service]\nType=notify\nSockets={{service}}.socket\nNonBlocking=yes\n\
             EnvironmentFile={{root}}/releases/%i/app.env\nWorkingDirectory={{root}}/releases/%i\n\
             ExecStart={{root}}/releases/%i/{{command}}{{args}}\nTimeoutStartSec={{start_timeout}}\n\
             TimeoutStopSec={{stop_timeout}}\nKillMode=mixed\nRestart=on-failure\n{{output}}\n\n\
             [Install]\nWantedBy=multi-user.target\n",
    ),
];

/// A bundle folder like scripts/bundle builds: the repository's appspec.yml and
/// deploy.yml, its units/ (`repo_units`) or fixed ones, and stand-in executables.
fn bundle_with(repo_units: bool) -> TempDir {
    let d = TempDir(temp_dir("lint-test").unwrap());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in ["appspec.yml", "deploy.yml"] {
        std::fs::copy(repo.join(f), d.0.join(f)).unwrap();
    }
    std::fs::create_dir_all(d.0.join("units")).unwrap();
    for (f, text) in UNITS {
        if repo_units {
            std::fs::copy(repo.join("units").join(f), d.0.join("units").join(f)).unwrap();
        } else {
            std::fs::write(d.0.join("units").join(f), text).unwrap();
        }
    }
    for h in [
        "application-stop",
        "before-install",
        "application-start",
        "validate-service",
    ] {
        exec(&d.0.join("hooks").join(h), "#!/bin/sh\n");
    }
    exec(&d.0.join("bin/sample-app"), "#!/bin/sh\n");
    d
}

fn bundle() -> TempDir {
    bundle_with(false)
}

fn messages(r: &Report) -> String {
    r.problems.iter().map(|p| format!("{p}\n")).collect()
}

#[test]
fn the_repos_bundle_lints_clean() {
    let d = bundle_with(true);
    let r = lint_dir(&d.0);
    assert_eq!(r.errors() + r.warnings(), 0, "{r}");
    if find_on_path("systemd-analyze").is_none() {
        assert!(r.notes.iter().any(|n| n.contains("not verified")), "{r}");
    } else {
        assert!(r.notes.is_empty(), "{r}");
    }
}

#[test]
fn appspec_yaml_and_nested_appspec_are_named() {
    let d = bundle();
    std::fs::rename(d.0.join("appspec.yml"), d.0.join("appspec.yaml")).unwrap();
    let (_, p) = check_appspec(&d.0);
    assert!(
        p.len() == 1
            && p[0].to_string().contains("appspec.yaml")
            && p[0].message.contains("rename it to appspec.yml"),
        "{p:#?}"
    );
    std::fs::create_dir_all(d.0.join("rev")).unwrap();
    std::fs::rename(d.0.join("appspec.yaml"), d.0.join("rev/appspec.yml")).unwrap();
    let (_, p) = check_appspec(&d.0);
    assert!(
        p[0].to_string()
            .contains("rev/appspec.yml: appspec.yml must be at the bundle's root"),
        "{p:#?}"
    );
    std::fs::remove_dir_all(d.0.join("rev")).unwrap();
    let (_, p) = check_appspec(&d.0);
    assert!(
        p[0].to_string()
            .contains("appspec.yml: missing at the bundle's root"),
        "{p:#?}"
    );
}

#[test]
fn our_hook_scripts_need_the_handoff_beside_them() {
    let d = bundle();
    for hook in crate::bundle::project::HOOKS {
        exec(&d.0.join("hooks").join(hook), crate::bundle::project::HOOK_SCRIPT);
    }
    let r = lint_dir(&d.0);
    let text = messages(&r);
    assert_eq!(r.errors(), 4, "{text}");
    assert!(
        text.contains("error: hooks/before-install: runs hooks/handoff, which is missing or not executable"),
        "{text}"
    );
    exec(&d.0.join("hooks/handoff"), "#!/bin/sh\n");
    let r = lint_dir(&d.0);
    assert_eq!(r.errors(), 0, "{}", messages(&r));
}

#[test]
fn scripts_must_be_in_the_bundle_and_executable() {
    let d = bundle();
    std::fs::remove_file(d.0.join("hooks/validate-service")).unwrap();
    std::fs::set_permissions(
        d.0.join("hooks/before-install"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::remove_file(d.0.join("hooks/application-start")).unwrap();
    std::fs::create_dir(d.0.join("hooks/application-start")).unwrap();
    let r = lint_dir(&d.0);
    let text = messages(&r);
    assert_eq!((r.errors(), r.warnings()), (2, 1), "{text}");
    assert!(
            text.contains("error: appspec.yml: hooks.ValidateService[0].location: hooks/validate-service is not in the bundle"),
            "{text}"
        );
    assert!(
        text.contains(
            "error: appspec.yml: hooks.ApplicationStart[0].location: hooks/application-start is not a file"
        ),
        "{text}"
    );
    assert!(
            text.contains("warning: appspec.yml: hooks.BeforeInstall[0].location: hooks/before-install is not executable; the agent chmods it"),
            "{text}"
        );
    let text = GOOD.replace("hooks/before-install", "../outside");
    std::fs::write(d.0.join("appspec.yml"), text).unwrap();
    let (_, p) = check_appspec(&d.0);
    assert!(
        p.iter().any(|p| p.message.contains("points outside the bundle")),
        "{p:#?}"
    );
}

#[test]
fn deploy_yml_errors_come_from_the_hooks_own_loader() {
    let d = bundle();
    let path = d.0.join("deploy.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("keep: 3", "keep: 1")).unwrap();
    let r = lint_dir(&d.0);
    assert_eq!(r.problems.len(), 1, "{r}");
    assert_eq!(r.problems[0].file, "deploy.yml");
    assert_eq!(r.problems[0].field, "releases.keep");
    assert!(r.problems[0].message.contains("keep at least 2"), "{r}");

    std::fs::write(&path, &text).unwrap();
    std::fs::set_permissions(d.0.join("bin/sample-app"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = lint_dir(&d.0);
    assert!(
        r.problems.len() == 1
            && r.problems[0]
                .to_string()
                .contains("deploy.yml: app.command: bin/sample-app is not executable"),
        "{r}"
    );
    std::fs::remove_file(d.0.join("bin/sample-app")).unwrap();
    let r = lint_dir(&d.0);
    assert!(
        messages(&r).contains("app.command: bin/sample-app is not in the bundle"),
        "{r}"
    );
    std::fs::remove_file(&path).unwrap();
    let r = lint_dir(&d.0);
    assert!(
        messages(&r).contains("error: deploy.yml: cannot read the deploy config"),
        "{r}"
    );
}

#[test]
fn unit_templates_are_rendered_and_verified() {
    let d = bundle();
    let path = d.0.join("units/app@.service");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("Type=notify", "Type=notify\nFooBar=1")).unwrap();
    let r = lint_dir(&d.0);
    if find_on_path("systemd-analyze").is_none() {
        assert_eq!(r.errors(), 0, "{r}");
        assert!(r.notes[0].contains("systemd-analyze is not on PATH"), "{r}");
    } else {
        assert_eq!(
            r.errors(),
            1,
            "only the bad directive, not the missing release: {r}"
        );
        let p = &r.problems[0];
        assert_eq!(p.file, "units/app@.service", "{r}");
        assert!(
            p.field.starts_with("line ") && p.field.contains("sample@.service"),
            "{r}"
        );
        assert!(
            p.message.contains("Unknown key") && p.message.contains("FooBar"),
            "{r}"
        );
        assert!(
            !messages(&r).contains("/releases/"),
            "the release's ExecStart, absent here, is not reported: {r}"
        );
    }
    std::fs::write(&path, text.replace("{{command}}", "{{comand}}")).unwrap();
    let r = lint_dir(&d.0);
    assert!(messages(&r).contains("unknown placeholder {{comand}}"), "{r}");
}

#[test]
fn relative_symlinks_out_of_the_bundle_are_errors_absolute_ones_warn_when_missing_here() {
    let d = bundle();
    std::os::unix::fs::symlink("/etc/passwd", d.0.join("bin/abs")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/handoff/python3", d.0.join("bin/python3")).unwrap();
    std::os::unix::fs::symlink("../../x", d.0.join("bin/up")).unwrap();
    std::os::unix::fs::symlink("sample-app", d.0.join("bin/ok")).unwrap();
    std::os::unix::fs::symlink("../deploy.yml", d.0.join("bin/ok2")).unwrap();
    let r = lint_dir(&d.0);
    let text = messages(&r);
    assert_eq!((r.errors(), r.warnings()), (1, 1), "{text}");
    assert!(
        text.contains("error: bin/up: symlink to ../../x points outside the bundle"),
        "{text}"
    );
    assert!(
        text.contains(
            "warning: bin/python3: symlink to /nonexistent/handoff/python3, which this machine does not have"
        ) && text.contains("rebuild the venv"),
        "{text}"
    );
    assert!(
        !text.contains("bin/abs"),
        "a present absolute target is fine: {text}"
    );
}

#[test]
fn zips_are_unpacked_with_modes_and_linted() {
    let d = bundle();
    std::os::unix::fs::symlink("/etc", d.0.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("../outside", d.0.join("up-link")).unwrap();
    std::fs::set_permissions(
        d.0.join("hooks/before-install"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let zip = d.0.with_extension("zip");
    let _cleanup = TempDir(zip.clone());
    write_zip(&d.0, &zip);
    assert!(is_zip(&zip));
    assert!(!is_zip(&d.0.join("deploy.yml")));
    let r = lint(&zip).unwrap();
    let text = messages(&r);
    assert_eq!((r.errors(), r.warnings()), (1, 1), "{text}");
    assert!(
        text.contains("up-link: symlink to ../outside points outside"),
        "{text}"
    );
    assert!(!text.contains("etc-link"), "{text}");
    assert!(text.contains("hooks/before-install is not executable"), "{text}");

    let out = TempDir(temp_dir("unzip-test").unwrap());
    assert_eq!(unpack_zip(&zip, &out.0).unwrap(), vec![]);
    let mode = |p: &str| std::fs::metadata(out.0.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("hooks/application-start"), 0o755);
    assert_eq!(mode("hooks/before-install"), 0o644);
    assert_eq!(
        std::fs::read_link(out.0.join("etc-link")).unwrap(),
        Path::new("/etc")
    );
    assert!(lint(&d.0.join("nope.zip")).is_err());
    assert!(format!("{:#}", lint(&d.0.join("deploy.yml")).unwrap_err()).contains("is not a zip"));
}

#[test]
fn zip_entries_that_escape_are_not_written() {
    let d = TempDir(temp_dir("zip-slip").unwrap());
    let zip = d.0.join("evil.zip");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
        let o = zip::write::SimpleFileOptions::default();
        w.start_file("appspec.yml", o).unwrap();
        std::io::Write::write_all(&mut w, GOOD.as_bytes()).unwrap();
        w.start_file("../escaped", o).unwrap();
        w.finish().unwrap();
    }
    let out = d.0.join("out");
    std::fs::create_dir(&out).unwrap();
    let p = unpack_zip(&zip, &out).unwrap();
    assert!(
        p.len() == 1
            && p[0]
                .to_string()
                .contains("../escaped: zip entry escapes the bundle"),
        "{p:#?}"
    );
    assert!(!d.0.join("escaped").exists());
    assert!(out.join("appspec.yml").is_file());
}

/// A zip of `dir` with modes and symlinks, as `zip -r -y` writes it.
fn write_zip(dir: &Path, zip: &Path) {
    fn add(w: &mut zip::ZipWriter<std::fs::File>, root: &Path, dir: &Path) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let o =
                zip::write::SimpleFileOptions::default().unix_permissions(meta.permissions().mode() & 0o7777);
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                w.add_symlink(rel, target.to_string_lossy(), o).unwrap();
            } else if meta.is_dir() {
                w.add_directory(format!("{rel}/"), o).unwrap();
                add(w, root, &path);
            } else {
                w.start_file(rel, o).unwrap();
                std::io::Write::write_all(w, &std::fs::read(&path).unwrap()).unwrap();
            }
        }
    }
    let mut w = zip::ZipWriter::new(std::fs::File::create(zip).unwrap());
    add(&mut w, dir, dir);
    w.finish().unwrap();
}
