//! Probes through the service's real port: the same path a client takes, so a release that
//! "started" without the socket (or answers from somewhere else) is never taken for healthy.
//!
//! Every probe is a new connection (no pooling), so while two instances share the socket the
//! probes reach both; the instance header tells which one answered.
//!
//! After READY=1 the new instance takes its share of every connection, so confirming it is
//! strict ([`Probe::confirm_ready`]): its first unhealthy answer ends the confirmation, and so
//! do [`HUNG_AFTER`] probes that connect and get no answer within [`PROBE_TIMEOUT`] — the old
//! instance answered every probe before the new one started, so a connection accepted and
//! never answered is the new release hanging.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use crate::config::DeployConfig;

/// How long one probe waits for its answer, unless deploy.yml says `health.timeout`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Unanswered probes after READY=1 that mark the new release as hung.
pub const HUNG_AFTER: u32 = 2;

pub struct Probe {
    client: reqwest::Client,
    /// `health.timeout`: one probe's wait for its answer.
    timeout: Duration,
    addrs: Vec<SocketAddr>,
    path: String,
    instance_header: Option<String>,
    /// Sent with every probe: `X-Handoff-Probe` asks the front (strategy: proxy) to name itself
    /// and the release it routed to.
    ask_front: bool,
    /// How the new instance said it serves, for messages.
    ready: crate::config::Ready,
    /// Probes through a socket that old and new instances share (native mode): an unanswered
    /// probe may have been accepted by either, so it is no proof against the new release.
    shared_socket: bool,
    /// `health.host`: the Host header, instead of the address probed.
    host: Option<String>,
    /// `health.expect`: the statuses that count as healthy.
    expect: Vec<u16>,
    /// `health.protocol: grpc`: the gRPC health check over HTTP/2 ([`grpc_serving`]).
    grpc: bool,
}

/// A verdict whose evidence cannot be pinned on the new release: probes through a shared socket
/// that got no answer (the old instance, loaded, may have accepted them). The release is
/// stopped all the same, but not marked failed: it stays a rollback target.
#[derive(Debug)]
pub struct Unattributed(pub String);

impl std::fmt::Display for Unattributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unattributed {}

/// Whether an error's verdict could not be pinned on the release ([`Unattributed`]).
pub fn is_unattributed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<Unattributed>().is_some())
}

/// The request header that makes the front name itself and the release it routed to.
pub const FRONT_PROBE_HEADER: &str = "X-Handoff-Probe";
/// The front's answer: which release it routed the probe to.
pub const FRONT_RELEASE_HEADER: &str = "X-Handoff-Release";
/// The front's answer: its own id.
pub const FRONT_ID_HEADER: &str = "X-Handoff-Front";

/// One answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The HTTP status; for a gRPC health check, 200 only when it answered SERVING.
    pub status: u16,
    pub instance: Option<String>,
    /// What a gRPC health check answered, when not SERVING.
    pub grpc: Option<String>,
}

/// The gRPC health check's path (grpc.health.v1).
pub const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

/// A gRPC message frame of an empty `HealthCheckRequest` (the whole server's health): not
/// compressed, 0 bytes long.
const GRPC_CHECK_ALL: [u8; 5] = [0, 0, 0, 0, 0];

/// Whether a gRPC health check's response body says SERVING: one message frame (a flag byte,
/// a 4-byte length) holding a `HealthCheckResponse` whose field 1 (`status`, a varint) is 1.
/// `Err` names what it says instead.
pub fn grpc_serving(body: &[u8]) -> std::result::Result<(), String> {
    const NAMES: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];
    let Some((head, message)) = body.split_first_chunk::<5>() else {
        return Err("no message (is the health service registered?)".into());
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if head[0] != 0 || message.len() < len {
        return Err("a message that is compressed or cut short".into());
    }
    // Field 1, wire type 0 (a varint); an absent field is its default, UNKNOWN.
    let status = match &message[..len] {
        [0x08, v, ..] if *v < 0x80 => usize::from(*v),
        [] => 0,
        _ => return Err("a message that is not a HealthCheckResponse".into()),
    };
    match status {
        1 => Ok(()),
        n => Err(NAMES.get(n).map_or(format!("status {n}"), |s| (*s).to_string())),
    }
}

fn client(timeout: Duration, grpc: bool) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder();
    // gRPC is HTTP/2; the probe starts it without an upgrade, as gRPC clients do.
    let builder = if grpc {
        builder.http2_prior_knowledge()
    } else {
        builder
    };
    builder
        .pool_max_idle_per_host(0)
        .connect_timeout(PROBE_TIMEOUT.min(timeout))
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| anyhow!("cannot build the HTTP client: {e}"))
}

/// `health.protocol: grpc`.
fn grpc(cfg: &DeployConfig) -> bool {
    cfg.health.protocol == crate::config::HealthProtocol::Grpc
}

/// The path probed: `health.path`, or the gRPC health check's.
fn probe_path(cfg: &DeployConfig) -> String {
    if grpc(cfg) {
        GRPC_HEALTH_PATH.into()
    } else {
        cfg.health.path.clone()
    }
}

impl Probe {
    /// Probes through the service's port. With `strategy: proxy` the front answers which
    /// release it routed each probe to, so no header is asked of the app.
    pub fn new(cfg: &DeployConfig) -> Result<Self> {
        let proxy = cfg.is_proxy();
        Ok(Self {
            client: client(cfg.health.timeout, grpc(cfg))?,
            timeout: cfg.health.timeout,
            addrs: cfg.probe_addrs(),
            path: probe_path(cfg),
            instance_header: if proxy {
                Some(FRONT_RELEASE_HEADER.into())
            } else {
                cfg.instance_header().map(str::to_string)
            },
            ask_front: proxy,
            ready: if proxy {
                crate::config::Ready::Probe
            } else {
                cfg.app.ready
            },
            shared_socket: !proxy,
            host: cfg.health.host.clone(),
            expect: cfg.health.expect.clone(),
            grpc: grpc(cfg),
        })
    }

    /// Probes through the service's port that confirm which front answers (`X-Handoff-Front`).
    pub fn front(cfg: &DeployConfig) -> Result<Self> {
        Ok(Self {
            instance_header: Some(FRONT_ID_HEADER.into()),
            ready: crate::config::Ready::Notify,
            shared_socket: true,
            ..Self::new(cfg)?
        })
    }

    /// Probes of a release on its private port (strategy: proxy), before it takes traffic.
    pub fn direct(cfg: &DeployConfig, port: u16) -> Result<Self> {
        Ok(Self {
            client: client(cfg.health.timeout, grpc(cfg))?,
            timeout: cfg.health.timeout,
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            path: probe_path(cfg),
            instance_header: None,
            ask_front: false,
            ready: crate::config::Ready::Probe,
            shared_socket: false,
            host: cfg.health.host.clone(),
            expect: cfg.health.expect.clone(),
            grpc: grpc(cfg),
        })
    }

    /// What a probe is, for messages: `GET` of the path, or the gRPC health check.
    fn verb(&self) -> &'static str {
        if self.grpc { "gRPC health check" } else { "GET" }
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn confirms_instance(&self) -> bool {
        self.instance_header.is_some()
    }

    /// One GET of the health path on `addr` (or one gRPC health check).
    async fn fetch(&self, addr: SocketAddr) -> std::result::Result<Reply, reqwest::Error> {
        let url = format!("http://{addr}{}", self.path);
        let mut req = if self.grpc {
            self.client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/grpc")
                .header(reqwest::header::TE, "trailers")
                .body(GRPC_CHECK_ALL.to_vec())
        } else {
            self.client.get(&url)
        };
        if self.ask_front {
            req = req.header(FRONT_PROBE_HEADER, "1");
        }
        if let Some(host) = &self.host {
            req = req.header(reqwest::header::HOST, host.as_str());
        }
        let resp = req.send().await?;
        let instance = self
            .instance_header
            .as_ref()
            .and_then(|h| resp.headers().get(h.as_str()))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = resp.status().as_u16();
        if !self.grpc || status != 200 {
            return Ok(Reply {
                status,
                instance,
                grpc: None,
            });
        }
        // A gRPC error comes in a `grpc-status` header when there is no message.
        let code = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let verdict = match code {
            Some(code) if code != "0" => {
                Err(format!("grpc-status {code} (is the health service registered?)"))
            }
            _ => grpc_serving(&resp.bytes().await?),
        };
        Ok(match verdict {
            Ok(()) => Reply {
                status: 200,
                instance,
                grpc: None,
            },
            Err(said) => Reply {
                status: 503,
                instance,
                grpc: Some(said),
            },
        })
    }

    /// One probe of the first address, the cheapest check that the service answers (`handoff
    /// status`): the answer when its status is in `health.expect`, else an error saying what
    /// came back.
    pub async fn once(&self) -> Result<Reply> {
        let addr = *self
            .addrs
            .first()
            .ok_or_else(|| anyhow!("no address to probe: deploy.yml `listen:` names none"))?;
        let _waiting = crate::timing::waiting(crate::timing::Wait::App);
        match self.fetch(addr).await {
            Ok(r) if self.expect.contains(&r.status) => Ok(r),
            Ok(r) => bail!(
                "{} http://{addr}{} answered {}",
                self.verb(),
                self.path,
                self.unexpected(&r, addr)
            ),
            Err(e) if e.is_timeout() && !e.is_connect() => bail!(
                "{} http://{addr}{}: no answer within {:.1} s (health.timeout)",
                self.verb(),
                self.path,
                self.timeout.as_secs_f64()
            ),
            Err(e) => bail!("{} http://{addr}{}: {e}", self.verb(), self.path),
        }
    }

    /// Retries until every address answers 200 from `release` (when the app names its
    /// instance) or the deadline passes. Returns what the probes saw on timeout.
    ///
    /// Probes go in bursts of concurrent connections: while two instances share the socket,
    /// a busy old instance tends to win every accept(); a burst wakes both.
    pub async fn wait_for(&self, release: &str, deadline: Duration) -> Result<()> {
        self.probe(release, deadline, false).await
    }

    /// Like [`Probe::wait_for`], but the first unhealthy answer from `release` itself ends it:
    /// for an instance that already sent READY=1 and so takes a share of the traffic, every
    /// retry would be requests served by a release that says it is broken.
    pub async fn confirm_ready(&self, release: &str, deadline: Duration) -> Result<()> {
        self.probe(release, deadline, true).await
    }

    async fn probe(&self, release: &str, deadline: Duration, fail_fast: bool) -> Result<()> {
        const BURST: usize = 4;
        let _waiting = crate::timing::waiting(crate::timing::Wait::App);
        let started = Instant::now();
        for addr in &self.addrs {
            let (mut probes, mut from_others, mut unanswered) = (0u32, 0u32, 0u32);
            let mut last_own: Option<String> = None;
            let mut last_error: Option<String> = None;
            let mut other_instances: Vec<String> = Vec::new();
            loop {
                let replies = futures_util::future::join_all((0..BURST).map(|_| self.fetch(*addr))).await;
                let mut healthy = false;
                for reply in replies {
                    probes += 1;
                    match reply {
                        Ok(r) if !self.is_from(release, &r) => {
                            from_others += 1;
                            let who = r.instance.unwrap_or_else(|| "no header".into());
                            if !other_instances.contains(&who) && other_instances.len() < 4 {
                                other_instances.push(who);
                            }
                        }
                        Ok(r) if self.expect.contains(&r.status) => healthy = true,
                        Ok(r) => last_own = Some(self.unexpected(&r, *addr)),
                        // Connected and no answer. A connection that did not even complete
                        // (a full accept queue drops the SYN) says nothing about the release.
                        Err(e) if e.is_timeout() && !e.is_connect() => {
                            unanswered += 1;
                            last_error = Some(format!(
                                "no answer within {:.1} s (health.timeout)",
                                self.timeout.as_secs_f64()
                            ));
                        }
                        Err(e) => {
                            last_error = Some(format!("{} http://{addr}{}: {e}", self.verb(), self.path))
                        }
                    }
                }
                let (after, said) = match self.ready {
                    crate::config::Ready::Notify => ("after READY=1", "sent READY=1"),
                    crate::config::Ready::Probe => ("after it started", "started"),
                };
                // The instance takes its share of connections from its first accept(): an
                // error answer ends it at once, in either readiness mode.
                if let (true, false, Some(own)) = (fail_fast, healthy, &last_own) {
                    bail!(
                        "{release} answered {own} on {addr}{} {after} ({probes} probes, \
                         {from_others} answered by other instances)",
                        self.path
                    );
                }
                if fail_fast && !healthy && unanswered >= HUNG_AFTER {
                    let message = format!(
                        "{release} {said} but does not answer: {unanswered} probes on {addr}{} connected \
                         and got no answer within {:.1} s each ({probes} probes, {from_others} answered by other \
                         instances). The release accepts connections and hangs (a deadlock, or a blocked event \
                         loop?), or its first requests take longer than that: raise health.timeout in deploy.yml \
                         if they do",
                        self.path,
                        self.timeout.as_secs_f64()
                    );
                    if self.shared_socket {
                        // Other instances may accept on the same socket: an unanswered probe
                        // may have been theirs (the caller knows whether any ran).
                        return Err(Unattributed(message).into());
                    }
                    bail!(message);
                }
                if healthy {
                    tracing::debug!("{addr}{}: 200 from {release} after {probes} probes", self.path);
                    break;
                }
                if started.elapsed() >= deadline {
                    let seen = match (&last_own, &last_error, &self.instance_header) {
                        (Some(own), _, _) => format!("{release} answered {own}"),
                        (None, Some(e), _) => format!("last error: {e}"),
                        (None, None, Some(h)) if from_others > 0 && self.ask_front => format!(
                            "every answer through the front named another in its {h} header (seen: {}); is an \
                             older front still serving? (`handoff status`)",
                            other_instances.join(", ")
                        ),
                        (None, None, Some(h)) if from_others > 0 && other_instances == ["no header"] => {
                            format!(
                                "every answer came without a {h} header, so none can be told apart as {release}'s. The \
                             app must add its INSTANCE environment variable (the release id) to its responses as a \
                             header, `{h}: $INSTANCE` (one line in most frameworks), or deploy.yml must say \
                             `instance_header: none` to deploy without that confirmation"
                            )
                        }
                        (None, None, Some(h)) if from_others > 0 => format!(
                            "no answer named {release} in its {h} header (seen: {}); the app must echo its \
                             INSTANCE environment variable (the release id) in a {h} response header, or deploy.yml \
                             must say `instance_header: none` to deploy without that confirmation",
                            other_instances.join(", ")
                        ),
                        (None, None, _) => format!("no probe reached {release}"),
                    };
                    bail!(
                        "{release} did not answer healthy on {addr}{} within {:.1} s: {seen} \
                         ({probes} probes, {from_others} answered by other instances)",
                        self.path,
                        deadline.as_secs_f64()
                    );
                }
                let pause = if probes < 80 { 20 } else { 200 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        Ok(())
    }

    /// An answer outside `health.expect`, with the setting that fixes the usual causes.
    fn unexpected(&self, reply: &Reply, addr: SocketAddr) -> String {
        let host = self.host.clone().unwrap_or_else(|| addr.to_string());
        let status = reply.status;
        if let Some(said) = &reply.grpc {
            return format!("{said}, not SERVING");
        }
        match status {
            400 | 421 if self.host.is_none() => format!(
                "HTTP {status} to Host {host} (set health.host to a name the app accepts, e.g. its ALLOWED_HOSTS)"
            ),
            301 | 302 | 307 | 308 => format!(
                "HTTP {status} (a redirect: to HTTPS? health.path must answer plain HTTP from the host, or list \
                 {status} in health.expect)"
            ),
            _ if self.expect != [200] => format!("HTTP {status} (health.expect: {:?})", self.expect),
            _ => format!("HTTP {status}"),
        }
    }

    fn is_from(&self, release: &str, reply: &Reply) -> bool {
        self.instance_header.is_none() || reply.instance.as_deref() == Some(release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_health_answer_is_serving_only_when_its_status_is_1() {
        assert_eq!(grpc_serving(&[0, 0, 0, 0, 2, 0x08, 0x01]), Ok(()));
        let not = |body: &[u8]| grpc_serving(body).unwrap_err();
        assert_eq!(not(&[0, 0, 0, 0, 2, 0x08, 0x02]), "NOT_SERVING");
        assert_eq!(not(&[0, 0, 0, 0, 2, 0x08, 0x03]), "SERVICE_UNKNOWN");
        assert_eq!(not(&[0, 0, 0, 0, 2, 0x08, 0x09]), "status 9");
        // An empty message is all defaults: UNKNOWN.
        assert_eq!(not(&[0, 0, 0, 0, 0]), "UNKNOWN");
        assert!(not(&[]).contains("no message"));
        assert!(not(&[1, 0, 0, 0, 2, 0x08, 0x01]).contains("compressed"));
        assert!(not(&[0, 0, 0, 0, 9, 0x08, 0x01]).contains("cut short"));
        assert!(not(&[0, 0, 0, 0, 2, 0x12, 0x01]).contains("not a HealthCheckResponse"));
    }

    #[test]
    fn grpc_probes_post_the_health_check_and_http_ones_get_the_path() {
        let base = "service: shop\nlisten: [\"127.0.0.1:8080\"]\napp:\n  command: bin/shop\nhealth:\n  instance_header: none\n";
        let http = DeployConfig::parse(base).unwrap();
        let grpc = DeployConfig::parse(&format!("{base}  protocol: grpc\n")).unwrap();
        let (h, g) = (Probe::new(&http).unwrap(), Probe::new(&grpc).unwrap());
        assert_eq!((h.path.as_str(), h.verb()), ("/healthz", "GET"));
        assert_eq!(
            (g.path.as_str(), g.verb()),
            (GRPC_HEALTH_PATH, "gRPC health check")
        );
        let e = format!(
            "{:#}",
            DeployConfig::parse(&format!("{base}  protocol: grpcweb\n")).unwrap_err()
        );
        assert!(e.contains("protocol") && e.contains("grpc"), "{e}");
    }
}
