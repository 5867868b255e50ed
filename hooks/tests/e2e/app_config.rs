//! What the app gets from its host and the step before the switch (deploy.yml `app.`
//! environment_files, credentials, state/cache/logs/runtime directories, before_switch), through
//! real deployments under load.

use std::path::Path;
use std::time::Duration;

use crate::load::Load;
use crate::service::{TestService, edit_deploy_yml};

/// The host fields and a `before_switch` of `args` (a `/bin/sh -c` script), under `app:`.
fn with_host_config(revision: &Path, env_file: &Path, token: &Path, script: &str) {
    let optional = env_file.with_file_name("optional-absent.env");
    edit_deploy_yml(
        revision,
        "  log_to_file: true\n",
        &format!(
            "  log_to_file: true\n  environment_files: [{}, -{}]\n  credentials: {{ token: {} }}\n  \
             state_directory: shop-data\n  cache_directory: shop-cache\n  logs_directory: shop-logs\n  runtime_directory: shop-run\n  before_switch:\n    command: /bin/sh\n    \
             args: [\"-c\", '{script}']\n    timeout: 30s\n",
            env_file.display(),
            optional.display(),
            token.display()
        ),
    );
}

/// The step of a good release: what it sees of the host, written where every release finds it.
const RECORD: &str = "echo \"$SECRET_FROM_HOST $(cat \"$CREDENTIALS_DIRECTORY/token\") $DEPLOYMENT_GROUP_NAME\" \
                      > \"$STATE_DIRECTORY/seen-$INSTANCE\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_secrets_state_and_a_step_before_the_switch_reach_the_release_and_a_failing_step_leaves_the_old_one_serving()
 {
    let mut svc = TestService::new();
    // The host's files, written before the deployment (as user data would): readable by root only.
    let env_file = svc.sandbox.scratch("host/env");
    std::fs::write(&env_file, "SECRET_FROM_HOST=s3cr3t\nSHARED=from-host\n").unwrap();
    let token = svc.sandbox.scratch("host/token");
    std::fs::write(&token, "tok-42\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in [&env_file, &token] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // SHARED is set by the bundle too: the host's value must win.
    let bundle_env = [("SHARED", "from-bundle")];

    let v1 = svc.revision("v1", &bundle_env, "");
    with_host_config(&v1, &env_file, &token, RECORD);
    svc.deploy_ok("d-1", &v1);
    let state_dir = svc.sandbox.host_path("/var/lib/private/shop-data");
    assert_eq!(
        std::fs::read_to_string(state_dir.join("seen-d-1")).unwrap(),
        "s3cr3t tok-42 test\n",
        "before_switch ran with the host's environment file, the credential and the deployment group"
    );

    let load = Load::start(svc.port, Duration::from_secs(14), 2).await;
    let v2 = svc.revision("v2", &bundle_env, "");
    with_host_config(&v2, &env_file, &token, RECORD);
    svc.deploy_ok("d-2", &v2);
    assert_eq!(svc.answering_release(), "v2");
    // The state directory outlived v1: both steps' files are there.
    assert_eq!(
        std::fs::read_to_string(state_dir.join("seen-d-1")).unwrap(),
        "s3cr3t tok-42 test\n"
    );
    assert_eq!(
        std::fs::read_to_string(state_dir.join("seen-d-2")).unwrap(),
        "s3cr3t tok-42 test\n"
    );
    // The instance runs with the same: host values over the bundle's, its places, its credential.
    let env = svc.instance_environment("d-2");
    for line in [
        "SECRET_FROM_HOST=s3cr3t",
        "SHARED=from-host",
        "STATE_DIRECTORY=/var/lib/shop-data",
        "RUNTIME_DIRECTORY=/run/shop-run",
        "CACHE_DIRECTORY=/var/cache/shop-cache",
        "LOGS_DIRECTORY=/var/log/shop-logs",
        "INSTANCE=d-2",
    ] {
        assert!(
            env.lines().any(|l| l == line),
            "{line} not in the instance's environment:\n{env}"
        );
    }
    let credentials = env
        .lines()
        .find_map(|l| l.strip_prefix("CREDENTIALS_DIRECTORY="))
        .unwrap_or_else(|| panic!("no CREDENTIALS_DIRECTORY in:\n{env}"))
        .to_string();
    assert_eq!(
        std::fs::read_to_string(svc.sandbox.host_path(&format!("{credentials}/token"))).unwrap(),
        "tok-42\n"
    );
    // v1's stop did not take the runtime directory from v2.
    assert!(svc.sandbox.host_path("/run/shop-run").is_dir());

    // v3's step fails (a migration that cannot run): v3 never starts, v2 serves on untouched.
    let v3 = svc.revision("v3", &bundle_env, "");
    with_host_config(
        &v3,
        &env_file,
        &token,
        "echo applying 0042_orders; echo \"no such table: orders\" >&2; exit 3",
    );
    let failure = svc.deploy_fails("d-3", &v3, "application-start", 1, "exited with status 3");
    for needle in [
        "app.before_switch `/bin/sh -c",
        "applying 0042_orders",
        "no such table: orders",
        "d-2 keeps serving",
    ] {
        assert!(
            failure.output.contains(needle),
            "'{needle}' not in:\n{}",
            failure.output
        );
    }
    let report = load.finish().await;
    crate::load::assert_no_failures(
        &report,
        "v1 -> v2 with host config, then v3's failing before_switch",
    );
    assert_eq!(svc.serving().as_deref(), Some("d-2"));
    assert_eq!(svc.answering_release(), "v2");
    assert_eq!(svc.live_instances(), vec!["shop@d-2.service"]);
    assert!(
        svc.state()["failed"]
            .as_array()
            .is_some_and(|f| f.iter().any(|r| r == "d-3")),
        "{}",
        svc.state()
    );
    // The transient unit is gone (reset after its failure was read).
    assert_ne!(
        svc.unit_property("shop-before-switch-d-3.service", "ActiveState"),
        "failed"
    );

    // A host file that is missing fails BeforeInstall as a host error, naming it.
    let v4 = svc.revision("v4", &bundle_env, "");
    let absent = env_file.with_file_name("absent.env");
    with_host_config(&v4, &absent, &token, RECORD);
    svc.deploy_fails(
        "d-4",
        &v4,
        "before-install",
        3,
        &format!(
            "app.environment_files: {} does not exist on this host",
            absent.display()
        ),
    );
    assert_eq!(svc.answering_release(), "v2");
}
