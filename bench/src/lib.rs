//! Load during deployments, recorded and reported.
//!
//! - `loadgen` (src/bin/loadgen.rs, [`load`]): runs clients against 127.0.0.1:PORT — a paced
//!   probe that opens a new connection per request and records every request, keep-alive
//!   clients and `wrk` that never retry, `ab -r`, WebSocket clients — and takes marks
//!   (deployment windows) from a control file or stdin. Writes samples.csv and summary.json.
//!   - [`load::http`]: HTTP/1.1 by hand — response heads, one GET, failures named;
//!   - [`load::probe`]: the paced probe, a new connection per request, on its own thread;
//!   - [`load::keepalive`]: keep-alive clients that never retry;
//!   - [`load::websocket`]: WebSocket clients, close codes and reconnect times;
//!   - [`load::tools`]: `ab` and `wrk` as child processes, their output read;
//!   - [`load::control`]: the control file or stdin followed (marks, slow requests, stop).
//! - `report` (src/bin/report.rs, [`report`]): baseline vs switch-window latencies, which release
//!   served when, failures per client kind; markdown, a comparison table, a PNG via gnuplot.
//! - `report table` ([`repeat`]): `make bench`'s strategies run several times, each figure as
//!   its median with the min–max across runs, and against an earlier report.
//! - `hopbench` (src/bin/hopbench.rs, [`hop`]): the cost of a proxy hop for scripts/bench-hop —
//!   paced keep-alive latency from intended send times, idle connections held open, RSS.
//! - `report scale` ([`scale`]): the steps of scripts/bench-scale (thousands of WebSockets and
//!   keep-alive clients through a switch) as one table and a picture of the reconnects.
//! - `report fleet` ([`fleet`]): the run of scripts/fleet (hosts behind HAProxy, deployed in
//!   waves) as a table of waves, what the balancer and the clients saw, the time of each wave.
//!   - [`fleet::balancer`]: haproxy.log and stat-end.csv, which requests failed;
//!   - [`fleet::events`]: scripts/fleet's events.tsv and settings.env;
//!   - [`fleet::verdict`]: the checks of `--expect`;
//!   - [`fleet::markdown`]: the tables, and the time extrapolated to CodeDeploy's defaults;
//!   - [`fleet::plot`]: the picture, through gnuplot.

pub mod data;
pub mod fleet;
pub mod hop;
pub mod load;
pub mod repeat;
pub mod report;
pub mod scale;
pub mod stats;
