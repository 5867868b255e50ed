//! A service deployed by the hooks into a sandbox, the way the CodeDeploy agent runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

pub struct TestService {
    pub sandbox: Sandbox,
    pub port: u16,
    pub name: String,
    /// The revision of the last successful Install: its ApplicationStop runs next time.
    last_installed: Option<PathBuf>,
}

/// Replaces `from` with `to` in a revision's deploy.yml (`from` must be there).
pub fn edit_deploy_yml(revision: &Path, from: &str, to: &str) {
    let path = revision.join("deploy.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// Which hook failed, and its output.
#[derive(Debug)]
pub struct HookFailure {
    pub hook: String,
    pub output: String,
    pub code: Option<i32>,
}

impl TestService {
    pub fn new() -> Self {
        Self::on_arch("x86_64")
    }

    /// A service whose hooks and sample app are `arch`'s static build (`aarch64`: run by the
    /// kernel through qemu-user-static).
    pub fn on_arch(arch: &'static str) -> Self {
        let mut sandbox = Sandbox::start();
        sandbox.arch = arch;
        Self {
            sandbox,
            port: free_port(),
            name: "shop".into(),
            last_installed: None,
        }
    }

    /// A revision folder laid out like the bundle: deploy.yml, units/, bin/sample-app.
    /// `env` goes into app.environment (the sample app's knobs); `extra` is appended to
    /// deploy.yml.
    pub fn revision(&self, label: &str, env: &[(&str, &str)], extra: &str) -> PathBuf {
        let dir = self
            .sandbox
            .scratch(&format!("revisions/{label}-{}", free_port()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("units")).unwrap();
        for f in ["app.socket", "app-hold.service", "app@.service"] {
            std::fs::copy(workspace().join("units").join(f), dir.join("units").join(f)).unwrap();
        }
        // The test binary is large; a one-line launcher keeps the release copies small.
        // `exec` keeps the PID, so the unit's main process is the app itself.
        let app = self.sandbox.test_binary("sample-app");
        std::fs::write(
            dir.join("bin/sample-app"),
            format!("#!/bin/sh\nexec {app} \"$@\"\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("bin/sample-app"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut environment = format!("    RELEASE: \"{label}\"\n    SAMPLE_HARD_DEADLINE_MS: \"8000\"\n");
        for (k, v) in env {
            environment.push_str(&format!("    {k}: \"{v}\"\n"));
        }
        let config = format!(
            "service: {}\nlisten: [\"127.0.0.1:{}\"]\napp:\n  command: bin/sample-app\n  log_to_file: true\n  environment:\n{environment}\
             health:\n  path: /healthz\n  instance_header: X-Instance\n  stable_for: 1s\n\
             deadlines:\n  start: 10s\n  validate: 10s\ndrain:\n  budget: 10s\n{extra}",
            self.name, self.port
        );
        std::fs::write(dir.join("deploy.yml"), config).unwrap();
        dir
    }

    /// A revision with `strategy: proxy`: the sample app binds `127.0.0.1:$PORT` itself and
    /// exits at once on SIGTERM (an app that does nothing for a deploy), behind the front.
    /// `front` tags the front build: another tag is another front binary (a new id).
    pub fn proxied_revision(&self, label: &str, env: &[(&str, &str)], front: &str, extra: &str) -> PathBuf {
        let mut env = env.to_vec();
        env.push(("SAMPLE_EXIT_ON_SIGTERM", "1"));
        // Private ports below the ephemeral range, where `free_port()` picks the listen ports
        // of the tests that run at the same time (an app must never take one of those).
        let ports = 20000 + (free_port() % 250) * 40;
        let dir = self.revision(
            label,
            &env,
            &format!(
                "strategy: proxy\nfront:\n  ports: \"{ports}-{}\"\n{extra}",
                ports + 40
            ),
        );
        edit_deploy_yml(
            &dir,
            "  command: bin/sample-app\n",
            "  command: bin/sample-app\n  args: [\"--bind\", \"127.0.0.1:${PORT}\"]\n",
        );
        self.ship_front(&dir, front);
        dir
    }

    /// Puts the proxy templates and the front into a revision. Tag `a` is the front as bundles
    /// ship it: no front binary of its own, the revision's hooks executable (the static
    /// `handoff`) runs as the front. Any other tag is a front build of its own
    /// (`front/handoff-front`, a launcher of the static front): another tag, another front id.
    pub fn ship_front(&self, dir: &Path, tag: &str) {
        for f in ["proxied@.service", "front@.service"] {
            std::fs::copy(workspace().join("units").join(f), dir.join("units").join(f)).unwrap();
        }
        if tag == "a" {
            std::fs::create_dir_all(dir.join("hooks")).unwrap();
            link_or_copy(
                &workspace_bin_for(self.sandbox.arch, "handoff"),
                &dir.join("hooks/handoff"),
            );
            return;
        }
        std::fs::create_dir_all(dir.join("front")).unwrap();
        let front = self.sandbox.test_binary("handoff-front");
        let launcher = dir.join("front/handoff-front");
        std::fs::write(
            &launcher,
            format!("#!/bin/sh\n# front build {tag}\nexec {front} \"$@\"\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Front instances systemd has running (active or on their way).
    pub fn live_fronts(&self) -> Vec<String> {
        let out = run_ok(self.sandbox.command("systemctl").args([
            "list-units",
            "--plain",
            "--no-legend",
            "--state=active,activating,deactivating,failed",
            &format!("{}-front@*.service", self.name),
        ]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// The id of the one front that runs (asserts there is exactly one).
    pub fn front_id(&self) -> String {
        let fronts = self.live_fronts();
        assert_eq!(fronts.len(), 1, "{fronts:?}");
        fronts[0]
            .trim_start_matches(&format!("{}-front@", self.name))
            .trim_end_matches(".service")
            .to_string()
    }

    /// A hook run inside the sandbox with the agent's environment.
    pub fn hook_command(&self, hook: &str, deployment: &str, revision: &Path) -> Command {
        let mut cmd = self.sandbox.command(self.sandbox.test_binary("handoff"));
        cmd.arg(hook).arg("--revision").arg(revision);
        cmd.env("DEPLOYMENT_ID", deployment)
            .env("LIFECYCLE_EVENT", hook)
            .env("APPLICATION_NAME", "test")
            .env("DEPLOYMENT_GROUP_NAME", "test");
        cmd
    }

    /// A hook run under `timeout -s SIGNAL SECS`, as the agent's hook timeout (TERM) or a
    /// crash (KILL) would end it.
    pub fn hook_interrupted(
        &self,
        signal: &str,
        secs: &str,
        hook: &str,
        deployment: &str,
        revision: &Path,
    ) -> Output {
        let mut cmd = self.sandbox.command("timeout");
        cmd.args(["-s", signal, secs])
            .arg(self.sandbox.test_binary("handoff"))
            .arg(hook)
            .arg("--revision")
            .arg(revision);
        cmd.env("DEPLOYMENT_ID", deployment);
        let out = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| run(&mut cmd)),
            Err(_) => run(&mut cmd),
        };
        assert!(
            !out.status.success(),
            "{hook} was not interrupted:\n{}",
            explain(&cmd, &out)
        );
        out
    }

    pub fn hook(&self, hook: &str, deployment: &str, revision: &Path) -> Output {
        run(&mut self.hook_command(hook, deployment, revision))
    }

    /// The agent's in-place order: ApplicationStop from the last installed revision (none on
    /// the first deployment), BeforeInstall, (Install), ApplicationStart, ValidateService.
    pub fn deploy(&mut self, deployment: &str, revision: &Path) -> Result<String, HookFailure> {
        let mut log = String::new();
        let this = &*self;
        let step = |hook: &str, rev: &Path, log: &mut String| -> Result<(), HookFailure> {
            let mut cmd = this.hook_command(hook, deployment, rev);
            let out = run(&mut cmd);
            let text = explain(&cmd, &out);
            log.push_str(&text);
            if out.status.success() {
                Ok(())
            } else {
                Err(HookFailure {
                    hook: hook.into(),
                    output: text,
                    code: out.status.code(),
                })
            }
        };
        if let Some(prev) = &self.last_installed {
            step("application-stop", prev, &mut log)?;
        }
        step("before-install", revision, &mut log)?;
        // The agent records the last successful install right after Install.
        let rest = step("application-start", revision, &mut log)
            .and_then(|()| step("validate-service", revision, &mut log));
        self.last_installed = Some(revision.to_path_buf());
        rest.map(|()| log)
    }

    /// Deploys; panics with the failing hook's output if a hook fails. Returns the hooks' output.
    pub fn deploy_ok(&mut self, deployment: &str, revision: &Path) -> String {
        let mut deploy = || {
            self.deploy(deployment, revision)
                .unwrap_or_else(|f| panic!("deployment {deployment} failed in {}:\n{}", f.hook, f.output))
        };
        // Inside a (multi-thread) test runtime, keep the load clients' tasks running.
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(deploy),
            Err(_) => deploy(),
        }
    }

    /// Deploys expecting `hook` to fail with exit `code` and a message containing `needle`.
    pub fn deploy_fails(
        &mut self,
        deployment: &str,
        revision: &Path,
        hook: &str,
        code: i32,
        needle: &str,
    ) -> HookFailure {
        let mut deploy = || self.deploy(deployment, revision);
        let result = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(deploy),
            Err(_) => deploy(),
        };
        let failure = result.expect_err(&format!("deployment {deployment} was expected to fail in {hook}"));
        assert_eq!(
            (failure.hook.as_str(), failure.code),
            (hook, Some(code)),
            "{}",
            failure.output
        );
        assert!(
            failure.output.contains(needle),
            "expected '{needle}' in:\n{}",
            failure.output
        );
        failure
    }

    /// serving/previous from the hooks' state file.
    pub fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.sandbox.host_path(&format!("/opt/{}/state.json", self.name)))
            .unwrap_or_else(|_| "{}".into());
        serde_json::from_str(&text).unwrap()
    }

    pub fn serving(&self) -> Option<String> {
        self.state()["serving"].as_str().map(str::to_string)
    }

    /// The release id the service answers `GET /` with.
    pub fn answering_release(&self) -> String {
        let reply = http_get(self.port, "/").expect("GET /");
        reply
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("x-release:")
                    .then(|| l[10..].trim().to_string())
            })
            .unwrap_or_else(|| panic!("no X-Release in {reply}"))
    }

    pub fn handoff(&self, args: &[&str]) -> Output {
        let mut cmd = self.sandbox.command(self.sandbox.test_binary("handoff"));
        cmd.arg("--service").arg(&self.name).args(args);
        run(&mut cmd)
    }

    /// Instances systemd has running (active or on their way).
    pub fn live_instances(&self) -> Vec<String> {
        let out = run_ok(self.sandbox.command("systemctl").args([
            "list-units",
            "--plain",
            "--no-legend",
            "--state=active,activating,deactivating,failed",
            &format!("{}@*.service", self.name),
        ]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// A hook run with `HANDOFF_KILL_AT=step`: it must die by SIGKILL at that step.
    pub fn hook_killed_at(&self, step: &str, hook: &str, deployment: &str, revision: &Path) -> Output {
        let mut cmd = self.hook_command(hook, deployment, revision);
        cmd.env("HANDOFF_KILL_AT", step);
        let out = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| run(&mut cmd)),
            Err(_) => run(&mut cmd),
        };
        // Through `scripts/sandbox exec`, a SIGKILL shows as the shell's 128 + 9.
        assert_eq!(
            out.status.code(),
            Some(137),
            "{hook} was not killed at {step}:\n{}",
            explain(&cmd, &out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("HANDOFF_KILL_AT={step}")),
            "{}",
            explain(&cmd, &out)
        );
        out
    }

    /// A hook sent SIGTERM (the agent's hook timeout) at `step` (`HANDOFF_KILL_AT` with
    /// `HANDOFF_KILL_SIGNAL=TERM`): it must settle the service and say so, exiting `code`: 0 when
    /// the release it deploys serves (SIGTERM after the commit), 1 when it does not.
    pub fn hook_termed_at(
        &self,
        step: &str,
        hook: &str,
        deployment: &str,
        revision: &Path,
        code: i32,
    ) -> Output {
        let mut cmd = self.hook_command(hook, deployment, revision);
        cmd.env("HANDOFF_KILL_AT", step)
            .env("HANDOFF_KILL_SIGNAL", "TERM");
        let out = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| run(&mut cmd)),
            Err(_) => run(&mut cmd),
        };
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(code)
                && text.contains(&format!("HANDOFF_KILL_AT={step}"))
                && text.contains("interrupted by SIGTERM (the agent's hook timeout?) and settled"),
            "{hook} did not settle after SIGTERM at {step} (expected exit {code}):\n{}",
            explain(&cmd, &out)
        );
        out
    }

    /// The installed instance template, as systemd will read it.
    pub fn installed_template(&self) -> String {
        std::fs::read_to_string(
            self.sandbox
                .host_path(&format!("/etc/systemd/system/{}@.service", self.name)),
        )
        .unwrap()
    }

    /// One property of a unit, as `systemctl show -P` prints it.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        let out = run_ok(
            self.sandbox
                .command("systemctl")
                .args(["show", "-P", property, unit]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `systemctl is-enabled` of a unit.
    pub fn is_enabled(&self, unit: &str) -> String {
        let out = run(self.sandbox.command("systemctl").args(["is-enabled", unit]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The environment of a release's running main process.
    pub fn instance_environment(&self, release: &str) -> String {
        let pid = self.unit_property(&format!("{}@{release}.service", self.name), "MainPID");
        let env = std::fs::read(self.sandbox.host_path(&format!("/proc/{pid}/environ"))).unwrap();
        String::from_utf8_lossy(&env).replace('\0', "\n")
    }

    /// Kills a release's main process (as a crash would) and waits until systemd has
    /// restarted it and it answers again.
    pub fn crash_and_wait_for_restart(&self, release: &str) {
        let unit = format!("{}@{release}.service", self.name);
        let pid = self.unit_property(&unit, "MainPID");
        // `kill -KILL 0` would kill this test's own process group.
        assert!(
            pid.parse::<u32>().is_ok_and(|p| p > 1),
            "{unit} has no main process ({pid})"
        );
        run_ok(self.sandbox.command("kill").args(["-KILL", &pid]));
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = self.unit_property(&unit, "MainPID");
            if now != pid && now != "0" && http_get(self.port, "/").is_ok_and(|r| r.contains(" 200 ")) {
                return;
            }
        }
        panic!("{unit} did not come back after a crash");
    }

    /// `handoff status` output, whether or not the service serves healthy (exit 0 or 1: the
    /// report was printed either way); for a service legitimately not healthy (an unfinished
    /// switch, a crashed or stopped instance, a damaged state file).
    pub fn status(&self) -> String {
        let out = self.handoff(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "handoff status printed no report ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// `handoff status` output; it must exit 0: the recorded release serves healthy.
    pub fn status_healthy(&self) -> String {
        let out = self.handoff(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "handoff status says the service does not serve healthy ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// `handoff status --json`, parsed, and its exit code (0 healthy, 1 not).
    pub fn status_json(&self) -> (serde_json::Value, i32) {
        let out = self.handoff(&["status", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let code = out.status.code().unwrap_or(-1);
        assert!(
            matches!(code, 0 | 1),
            "handoff status --json printed no report ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
        (json, code)
    }

    /// The app's own log of one release (units append it to /opt/<service>/logs).
    pub fn app_log(&self, release: &str) -> String {
        std::fs::read_to_string(
            self.sandbox
                .host_path(&format!("/opt/{}/logs/{release}.log", self.name)),
        )
        .unwrap_or_default()
    }
}
