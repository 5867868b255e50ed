use super::*;

pub(crate) const GOOD: &str = "version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: hooks/application-stop\n      timeout: 60\n  BeforeInstall:\n    - location: hooks/before-install\n      timeout: 120\n  ApplicationStart:\n    - location: hooks/application-start\n      timeout: 300\n  ValidateService:\n    - location: hooks/validate-service\n      timeout: 300\n";

fn problems(text: &str) -> Vec<Problem> {
    check_text(text, FILE_NAME).1
}

/// The one problem of a text, as displayed.
#[track_caller]
fn only(text: &str) -> String {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected exactly one problem, got {p:#?}");
    p[0].to_string()
}

#[test]
fn a_good_appspec_passes_and_the_repos_own_does_too() {
    assert_eq!(problems(GOOD), vec![]);
    let repo = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../appspec.yml")).unwrap();
    let (spec, p) = check_text(&repo, FILE_NAME);
    assert_eq!(p, vec![], "the repository's appspec.yml");
    let spec = spec.unwrap();
    assert_eq!(
        spec.scripts("ApplicationStart")[0].location(),
        "hooks/application-start"
    );
    assert_eq!(spec.scripts("ApplicationStart")[0].timeout_secs(), 300);
    assert!(spec.scripts("AfterInstall").is_empty());
    assert_eq!(spec.file_exists_behavior(), "DISALLOW");
}

#[test]
fn quoted_version_is_refused() {
    let e = only(&GOOD.replace("version: 0.0", "version: \"0.0\""));
    assert!(e.starts_with("error: appspec.yml: version (line 1)"), "{e}");
    assert!(
        e.contains("quoted") && e.contains("write `version: 0.0` without quotes"),
        "{e}"
    );
    let e = only(&GOOD.replace("version: 0.0", "version: '0.0'  # quoted"));
    assert!(e.contains("quoted"), "{e}");
    let e = only(&GOOD.replace("version: 0.0", "version: 1.0"));
    assert!(e.contains("version: 1.0 is not accepted"), "{e}");
    let e = only(&GOOD.replace("version: 0.0\n", ""));
    assert!(e.contains("version: missing"), "{e}");
    // Ruby: 0 == 0.0.
    assert_eq!(problems(&GOOD.replace("version: 0.0", "version: 0")), vec![]);
}

#[test]
fn os_must_be_linux() {
    let e = only(&GOOD.replace("os: linux", "os: Linux"));
    assert!(
        e.contains("os: \"Linux\" is not accepted") && e.contains("`os: linux`"),
        "{e}"
    );
    let e = only(&GOOD.replace("os: linux\n", ""));
    assert!(e.contains("os: missing"), "{e}");
}

#[test]
fn unknown_and_agent_events_are_refused() {
    let e = only(&GOOD.replace("ValidateService:", "ValidateSevice:"));
    assert!(e.contains("hooks.ValidateSevice: unknown lifecycle event"), "{e}");
    let e = only(&GOOD.replace("ValidateService:", "validateservice:"));
    assert!(e.contains("did you mean ValidateService?"), "{e}");
    let e = only(&GOOD.replace("ValidateService:", "Install:"));
    assert!(
        e.contains("hooks.Install: Install is the agent's own step"),
        "{e}"
    );
    let e = only(&GOOD.replace("ValidateService:", "DownloadBundle:"));
    assert!(
        e.contains("hooks.DownloadBundle: DownloadBundle is the agent's own step"),
        "{e}"
    );
    let e = only(&format!("{GOOD}  AfterInstall:\n"));
    assert!(e.contains("hooks.AfterInstall: has no scripts"), "{e}");
}

#[test]
fn every_script_needs_a_location_and_a_positive_timeout() {
    let e = only(&GOOD.replace("- location: hooks/before-install\n     ", "-"));
    assert!(e.contains("hooks.BeforeInstall[0].location: missing"), "{e}");
    let e = only(&GOOD.replace("timeout: 120", "timeout: 0"));
    assert!(
        e.contains("hooks.BeforeInstall[0].timeout: 0 is not a positive number"),
        "{e}"
    );
    let e = only(&GOOD.replace("timeout: 120", "timeout: -5"));
    assert!(e.contains("timeout: -5 is not a positive"), "{e}");
    let e = only(&GOOD.replace("timeout: 120", "timeout: soon"));
    assert!(e.contains("reads it as 0"), "{e}");
    let e = only(&GOOD.replace("timeout: 120", "timeout: 7200"));
    assert!(e.contains("7200 s is over CodeDeploy's limit of 3600 s"), "{e}");
    // The agent takes "30" with to_i; no timeout means 3600.
    let (spec, p) = check_text(&GOOD.replace("timeout: 120", "timeout: \"30\""), FILE_NAME);
    assert_eq!(p, vec![]);
    assert_eq!(spec.unwrap().scripts("BeforeInstall")[0].timeout_secs(), 30);
    let (spec, _) = check_text(&GOOD.replace("      timeout: 120\n", ""), FILE_NAME);
    assert_eq!(spec.unwrap().scripts("BeforeInstall")[0].timeout_secs(), 3600);
}

#[test]
fn runas_and_unknown_keys_are_warnings() {
    let p = problems(&GOOD.replace("timeout: 120", "timeout: 120\n      runas: deploy"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].severity, Severity::Warning);
    assert!(
        p[0].to_string()
            .contains("hooks.BeforeInstall[0].runas: `runas: deploy`")
            && p[0].message.contains("need root; remove `runas:`"),
        "{}",
        p[0]
    );
    let p = problems(&GOOD.replace("timeout: 120", "timout: 120"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].to_string()
            .contains("hooks.BeforeInstall[0].timout: unknown key"),
        "{}",
        p[0]
    );
    let p = problems(&format!("{GOOD}hook:\n  x: 1\n"));
    assert!(
        p.len() == 1 && p[0].severity == Severity::Warning && p[0].field == "hook (line 16)",
        "{p:#?}"
    );
}

#[test]
fn octal_modes_are_caught_with_their_effect() {
    let spec = |mode: &str| {
        format!(
            "{GOOD}permissions:\n  - object: /opt/app\n    pattern: \"**\"\n    mode: {mode}\n    type:\n      - file\n"
        )
    };
    assert_eq!(problems(&spec("644")), vec![]);
    assert_eq!(problems(&spec("\"0644\"")), vec![]);
    let e = only(&spec("0644"));
    assert!(e.contains("permissions: mode (line 19)"), "{e}");
    assert!(
        e.contains("octal (420) and applies mode 420, not 0644") && e.contains("write `mode: 644`"),
        "{e}"
    );
    let e = only(&spec("0755"));
    assert!(
        e.contains("octal (493) and rejects") && e.contains("write `mode: 755`"),
        "{e}"
    );
    let e = only(&spec("0755  # rwx"));
    assert!(e.contains("write `mode: 755`"), "{e}");
    let e = only(&spec("rwx"));
    assert!(e.contains("'rwx' is not a mode"), "{e}");
    let e = only(&spec("788"));
    assert!(e.contains("'788' is not a mode"), "{e}");
    // A `mode:` elsewhere (not under permissions:) is not the agent's business.
    assert_eq!(
        problems(&format!("{GOOD}files:\n  - source: /\n    destination: /opt/x\n")),
        vec![]
    );
}

#[test]
fn anchors_and_aliases_are_refused() {
    let text =
        "version: 0.0\nos: linux\nhooks:\n  BeforeInstall: &pre\n    - location: a\n  AfterInstall: *pre\n";
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].message.contains("anchors (&name) and aliases (*name)"),
        "{}",
        p[0]
    );
    assert_eq!(p[0].field, "line 4", "the anchor's line: {}", p[0]);
    assert_eq!(anchor_line("a: \"&x\"\nb: [1, *y]\n"), Some(2));
    // The rest is still checked: the aliased list is read.
    let text = text.replace("location: a", "location: a\n      timeout: 0");
    let p = problems(&text);
    assert_eq!(p.len(), 3, "anchor + both timeouts: {p:#?}");
    // A & or * inside a quoted string is text, not an anchor.
    assert_eq!(
        problems(&GOOD.replace("hooks/before-install", "\"hooks/a&b*c\"")),
        vec![]
    );
}

#[test]
fn syntax_errors_and_files_entries_are_reported() {
    let e = only("version: 0.0\nos: linux\nhooks: [1\n");
    assert!(e.contains("is not valid YAML") && e.contains("line"), "{e}");
    let p = problems(&format!(
        "{GOOD}files:\n  - source: bin\n    destination: opt/app\n  - destination: /x\nfile_exists_behavior: KEEP\n"
    ));
    let text: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(p.len(), 3, "{text:#?}");
    assert!(text[0].contains("files[0].destination: 'opt/app' is not an absolute path"));
    assert!(text[1].contains("files[1].source: missing"));
    assert!(text[2].contains("file_exists_behavior: 'KEEP'"));
}

#[test]
fn raw_scanner_reads_block_yaml() {
    let lines = raw_lines("a: 1 # c\nb:\n  - c: \"x # y\"\n    d: 2\n# only\ne: 'q'\n");
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.number, l.section, l.top_level, l.key, l.value))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "a", true, "a", "1"),
            (2, "b", true, "b", ""),
            (3, "b", false, "c", "\"x # y\""),
            (4, "b", false, "d", "2"),
            (6, "e", true, "e", "'q'"),
        ]
    );
}
