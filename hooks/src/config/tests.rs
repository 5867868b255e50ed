use super::*;

const GOOD: &str = "service: sample\nlisten: [\"127.0.0.1:8080\"]\napp:\n  command: bin/sample-app\n";

#[test]
fn minimal_config_gets_defaults() {
    let c = DeployConfig::parse(GOOD).unwrap();
    assert_eq!(c.strategy, Strategy::Handoff);
    assert_eq!(c.releases.keep, 3);
    assert_eq!(c.deadlines.start, Duration::from_secs(60));
    assert_eq!(c.health.path, "/healthz");
    assert_eq!(c.instance_unit("d-1"), "sample@d-1.service");
}

#[test]
fn takeover_names_a_service_unit_other_than_ours() {
    let with = |unit: &str| format!("{GOOD}takeover: {unit}\n");
    assert_eq!(
        DeployConfig::parse(&with("myapp.service"))
            .unwrap()
            .takeover
            .as_deref(),
        Some("myapp.service")
    );
    assert_eq!(DeployConfig::parse(GOOD).unwrap().takeover, None);
    assert!(DeployConfig::parse(&with("sample-web.service")).is_ok());
    for bad in [
        "myapp",
        "myapp.socket",
        "sample.service",
        "sample@v1.service",
        "sample-hold.service",
        "'my app.service'",
    ] {
        let e = err(&with(bad));
        assert!(
            e.contains("takeover: '") && e.contains("e.g. takeover: myapp.service"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn the_command_lines_words_are_deploy_ymls() {
    use clap::ValueEnum;
    for s in [Strategy::Handoff, Strategy::Restart, Strategy::Proxy] {
        let word = s.to_possible_value().unwrap().get_name().to_string();
        assert_eq!(word, s.name());
        let c = DeployConfig::parse(&format!("{GOOD}strategy: {word}\n")).unwrap();
        assert_eq!(c.strategy, s);
    }
    assert_eq!(Strategy::from_str("native", false).unwrap(), Strategy::Handoff);
    assert_eq!(
        DeployConfig::parse(&format!("{GOOD}strategy: native\n"))
            .unwrap()
            .strategy,
        Strategy::Handoff
    );
    for n in [Need::Jit, Need::Setuid, Need::Proc] {
        assert_eq!(n.to_possible_value().unwrap().get_name(), n.name());
    }
    assert_eq!(Ready::Probe.to_possible_value().unwrap().get_name(), "probe");
    assert_eq!(
        DeployConfig::parse(&format!("{GOOD}  ready: probe\n"))
            .unwrap()
            .app
            .ready,
        Ready::Probe
    );
}

#[test]
fn health_host_and_expected_statuses() {
    let c = DeployConfig::parse(&format!(
        "{GOOD}health:\n  host: shop.example\n  expect: [200, 204]\n"
    ))
    .unwrap();
    assert_eq!(c.health.host.as_deref(), Some("shop.example"));
    assert_eq!(c.health.expect, [200, 204]);
    assert_eq!(DeployConfig::parse(GOOD).unwrap().health.expect, [200]);
    assert!(
        err(&format!("{GOOD}health:\n  host: 'a b'\n")).contains("health.host: 'a b' is not a host name")
    );
    assert!(err(&format!("{GOOD}health:\n  expect: []\n")).contains("health.expect"));
    assert!(err(&format!("{GOOD}health:\n  expect: [700]\n")).contains("from 100 to 599"));
}

#[test]
fn durations_parse_in_every_form() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("1min 30s").unwrap(), Duration::from_secs(90));
    // The range check's own suggestion parses: deadlines up to 1h.
    let c = DeployConfig::parse(&format!("{GOOD}deadlines:\n  validate: 1h\n  start: 2min\n")).unwrap();
    assert_eq!(c.deadlines.validate, Duration::from_secs(3600));
    let c = DeployConfig::parse(&format!(
        "{GOOD}drain:\n  budget: 1500ms\ndeadlines:\n  start: 5\n"
    ))
    .unwrap();
    assert_eq!(c.drain.budget, Duration::from_millis(1500));
    assert_eq!(c.deadlines.start, Duration::from_secs(5));
}

fn err(yaml: &str) -> String {
    format!("{:#}", DeployConfig::parse(yaml).unwrap_err())
}

#[test]
fn errors_name_the_field_and_the_fix() {
    assert!(err(&GOOD.replace("sample\n", "../etc\n")).contains("service: '../etc'"));
    assert!(err(&GOOD.replace("127.0.0.1:8080", "localhost")).contains("listen: 'localhost' is not IP:port"));
    assert!(err(&GOOD.replace("bin/sample-app", "../../bin/sh")).contains("app.command"));
    assert!(err(&GOOD.replace("bin/sample-app", "/bin/../sh")).contains("app.command"));
    assert!(err(&GOOD.replace("bin/sample-app", "\"bin/app --fast\"")).contains("put arguments in app.args"));
    assert_eq!(
        DeployConfig::parse(&GOOD.replace("bin/sample-app", "/usr/bin/gunicorn"))
            .unwrap()
            .executable(),
        "/usr/bin/gunicorn"
    );
    assert_eq!(
        DeployConfig::parse(GOOD).unwrap().executable(),
        "/opt/sample/releases/%i/bin/sample-app"
    );
    let needs = |n: &str| format!("{GOOD}  needs: {n}\n");
    assert_eq!(
        DeployConfig::parse(&needs("[jit, setuid]")).unwrap().app.needs,
        vec![Need::Jit, Need::Setuid]
    );
    assert!(err(&needs("[jit, jit]")).contains("'jit' is listed twice"));
    assert!(err(&needs("[wx]")).contains("wx"));
    assert!(
        err(&format!("{GOOD}health:\n  instance_header: \"X Instance\"\n")).contains("not a header name")
    );
    let none = DeployConfig::parse(&format!("{GOOD}health:\n  instance_header: none\n")).unwrap();
    assert_eq!(none.instance_header(), None);
    assert!(none.check_instance_confirmation().is_ok());
    let unset = DeployConfig::parse(GOOD)
        .unwrap()
        .check_instance_confirmation()
        .unwrap_err()
        .to_string();
    assert!(
        unset.contains("X-Instance: $INSTANCE") && unset.contains("instance_header: none"),
        "{unset}"
    );
    let restart = DeployConfig::parse(&format!("{GOOD}strategy: restart\n")).unwrap();
    assert!(restart.check_instance_confirmation().is_ok());
    assert!(err(&format!("{GOOD}releases:\n  keep: 1\n")).contains("releases.keep"));
    assert!(err(&format!("{GOOD}health:\n  timeout: 50ms\n")).contains("health.timeout"));
    assert!(err(&format!("{GOOD}drain:\n  budget: 0s\n")).contains("drain.budget"));
    assert!(err(&format!("{GOOD}health:\n  path: healthz\n")).contains("health.path"));
    assert!(err(&format!("{GOOD}colour: blue\n")).contains("colour"));
    assert!(err(&format!("{GOOD}strategy: blue-green\n")).contains("blue-green"));
}

#[test]
fn proxy_settings_are_checked_and_port_only_in_args() {
    let proxy = format!("{GOOD}strategy: proxy\n");
    let c = DeployConfig::parse(&proxy).unwrap();
    assert!(c.is_proxy());
    assert_eq!(c.front.port_range().unwrap(), 20000..=20999);
    assert_eq!(c.front_unit("ab12"), "sample-front@ab12.service");
    let with_port = proxy.replace(
        "bin/sample-app\n",
        "bin/sample-app\n  args: [\"--bind\", \"127.0.0.1:${PORT}\"]\n",
    );
    assert_eq!(
        DeployConfig::parse(&with_port).unwrap().app.args[1],
        "127.0.0.1:${PORT}"
    );
    assert!(err(&with_port.replace("strategy: proxy\n", "")).contains("only strategy: proxy sets"));
    assert!(err(&with_port.replace("${PORT}", "${HOME}")).contains("other than ${PORT}"));
    assert!(err(&format!("{proxy}front:\n  ports: \"80-90\"\n")).contains("front.ports"));
    assert!(err(&format!("{proxy}front:\n  ports: \"9000\"\n")).contains("FIRST-LAST"));
    assert!(err(&format!("{proxy}front:\n  idle_timeout: 10ms\n")).contains("front.idle_timeout"));
    assert!(err(&format!("{GOOD}front:\n  idle_timeout: 5s\n")).contains("strategy: proxy only"));
    assert!(
        err(&proxy.replace(
            "bin/sample-app\n",
            "bin/sample-app\n  environment: { PORT: \"1\" }\n"
        ))
        .contains("app.environment.PORT")
    );
}

#[test]
fn yaml_aliases_are_refused() {
    let yaml = "service: &s sample\nlisten: [\"127.0.0.1:8080\"]\napp:\n  command: *s\n";
    assert!(DeployConfig::parse(yaml).is_err());
}

#[test]
fn wildcard_listen_is_probed_on_loopback() {
    let c = DeployConfig::parse(&GOOD.replace("127.0.0.1:8080", "0.0.0.0:9000")).unwrap();
    assert_eq!(c.probe_addrs(), vec!["127.0.0.1:9000".parse().unwrap()]);
}

#[test]
fn unit_name_safety() {
    assert!(is_safe_name("d-ABC123", false));
    assert!(!is_safe_name("../x", true));
    assert!(!is_safe_name("a b", true));
    assert!(!is_safe_name("a@b", true));
    assert!(!is_safe_name("", true));
}
