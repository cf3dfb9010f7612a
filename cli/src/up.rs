//! `weft up`: starts the four processes of the mesh in order, each once the one before is
//! healthy, then watches over them until SIGINT or SIGTERM.
//!
//! A child that exits on its own is reported (name, exit status, last log lines) and the
//! others keep running, as they would in production: the gateway answers 503 for a missing
//! service's routes. With `--restart` the child is started again after a delay that doubles
//! with each quick failure. On SIGINT/SIGTERM every child gets SIGTERM and drains; those still
//! running after `server.drain_timeout_ms` plus a margin, or at a second Ctrl-C, are killed.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{sync::mpsc, task::JoinHandle, time::sleep_until};
use weft_mesh::{MeshConfig, config::process_name};

use crate::{
    child::{self, Exited, Launch, Running},
    output::Output,
    probe,
    tool::Deployment,
    up_viewer::{self, ViewerArgs},
};

/// Time allowed to one health check attempt.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two health check attempts.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How often the wait for a child is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// Time a stopped child gets beyond its drain timeout before it is killed.
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// Time a killed child gets to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// A child that ran this long before exiting is restarted after the shortest delay again.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Longest delay before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an exit waits for a signal to `weft up` before it counts as "on its own": Ctrl-C in
/// a terminal reaches the children too, and a quick one may exit before `weft up` sees its own.
const SIGNAL_GRACE: Duration = Duration::from_millis(300);

/// Options of `weft up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// The mesh-config file, passed to every process, and where the binaries are.
    #[command(flatten)]
    pub deployment: Deployment,
    /// Restart a process that exits on its own, after a delay that grows with each quick exit.
    #[arg(long)]
    pub restart: bool,
    /// Seconds each process may take to become healthy.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub start_timeout: u64,
    /// The trace viewer.
    #[command(flatten)]
    pub viewer: ViewerArgs,
}

/// What a child is, which says how its health is checked.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A gRPC service: `grpc.health.v1` at its listen address.
    Service(SocketAddr),
    /// The REST gateway: `/healthz` then `/readyz`.
    Gateway,
}

/// One of the processes (every service declared in mesh-config, then the gateway), across its
/// restarts.
struct Slot {
    name: String,
    kind: Kind,
    binary: PathBuf,
    running: Option<Running>,
    /// When a restart is due (`--restart` only).
    restart_at: Option<Instant>,
    /// Exits in a row that came soon after a start.
    quick_exits: u32,
    /// The health watch after a restart.
    watch: Option<JoinHandle<()>>,
}

/// How the wait for one child to become healthy ended, when it did not fail.
enum Wait {
    Healthy,
    Interrupted(&'static str),
}

/// Runs `weft up` until the mesh is stopped; `Err` when it cannot start.
pub async fn run(args: UpArgs, output: Output) -> anyhow::Result<()> {
    let config_file = &args.deployment.mesh.config;
    if !config_file.exists() {
        bail!(
            "{} not found: run `weft up` from the root of the Weft repository, or name a \
             mesh-config file with --config",
            config_file.display()
        );
    }
    let config = MeshConfig::load(Some(config_file))?;
    prepare_mtls(&config, output)?;
    let config_path = std::path::absolute(config_file)
        .with_context(|| format!("cannot resolve {}", config_file.display()))?;
    let bin_dir = args.deployment.bin_dir.dir()?;
    let mut supervisor = Supervisor::new(config, config_path, &bin_dir, &args, output)?;
    supervisor.preflight()?;
    let mut signals = Signals::new()?;
    supervisor.describe();
    if let Some(viewer) = up_viewer::start(&args.viewer, &supervisor.config, output).await? {
        supervisor.child_env = viewer.child_env;
        supervisor.viewer_url = Some(viewer.viewer.url());
    }
    let started = Instant::now();
    for slot in 0..supervisor.slots.len() {
        match supervisor.start(slot, &mut signals).await {
            Ok(Wait::Healthy) => {}
            Ok(Wait::Interrupted(signal)) => {
                output.info(&format!("{signal} received during start-up: stopping"));
                supervisor.stop_all(&mut signals).await;
                return Ok(());
            }
            Err(err) => {
                supervisor.stop_all(&mut signals).await;
                return Err(err);
            }
        }
    }
    supervisor.ready(started.elapsed());
    supervisor.watch(&mut signals).await
}

/// With mTLS on: creates the certificates that are missing (saying so), and loads `weft`'s own
/// for the health checks; with it off, says that the mesh runs in plain text.
fn prepare_mtls(config: &MeshConfig, output: Output) -> anyhow::Result<()> {
    if !config.mtls.is_on() {
        output.info(
            "mTLS is off ([mtls] mode = \"off\"): the services talk in plain text; only for a \
             trusted network",
        );
        return Ok(());
    }
    let written = crate::certs::issue_all(
        &config.mtls,
        &config.identities(),
        crate::certs::Mode::Missing,
    )
    .context("cannot create the mTLS certificates (`weft certs`)")?;
    for line in written {
        output.info(&format!("weft certs: {line}"));
    }
    let tls = weft_mesh::mtls::MeshTls::load(&config.mtls, weft_mesh::config::OPERATOR_IDENTITY)?;
    weft_mesh::mtls::install(tls);
    Ok(())
}

/// The four children and what `weft up` knows about them.
struct Supervisor {
    config: MeshConfig,
    config_path: PathBuf,
    output: Output,
    restart: bool,
    start_timeout: Duration,
    slots: Vec<Slot>,
    exits: mpsc::UnboundedSender<Exited>,
    exit_events: mpsc::UnboundedReceiver<Exited>,
    /// Variables every child gets (the trace viewer's `OTEL_*`).
    child_env: Vec<(String, String)>,
    /// The trace viewer's page, when it runs.
    viewer_url: Option<String>,
}

// === impl Supervisor ===

impl Supervisor {
    fn new(
        config: MeshConfig,
        config_path: PathBuf,
        bin_dir: &Path,
        args: &UpArgs,
        output: Output,
    ) -> anyhow::Result<Self> {
        // The services in the order mesh-config declares them (by name); the gateway last.
        let children = config
            .services
            .iter()
            .map(|(name, service)| (process_name(name), Kind::Service(service.listen)))
            .chain([("weft-gateway".to_owned(), Kind::Gateway)]);
        let slots: Vec<Slot> = children
            .map(|(name, kind)| Slot {
                binary: child::binary_in(bin_dir, &name),
                name,
                kind,
                running: None,
                restart_at: None,
                quick_exits: 0,
                watch: None,
            })
            .collect();
        let missing: Vec<&str> = slots
            .iter()
            .filter(|s| !s.binary.is_file())
            .map(|s| s.name.as_str())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} not found in {}: build them first with \
                 `cargo build --workspace --bins` (or run `make run`), or name their folder \
                 with --bin-dir",
                missing.join(", "),
                bin_dir.display()
            );
        }
        let (exits, exit_events) = mpsc::unbounded_channel();
        Ok(Self {
            config,
            config_path,
            output,
            restart: args.restart,
            start_timeout: Duration::from_secs(args.start_timeout.max(1)),
            slots,
            exits,
            exit_events,
            child_env: Vec::new(),
            viewer_url: None,
        })
    }

    /// The address a child listens on.
    fn listen(&self, kind: Kind) -> SocketAddr {
        match kind {
            Kind::Service(listen) => listen,
            Kind::Gateway => self.config.gateway.listen,
        }
    }

    fn tls(&self) -> bool {
        !self.config.gateway.tls.cert_file.is_empty()
    }

    /// Where a child's health is checked, and whether over TLS: a service's gRPC port; the
    /// gateway's admin listener when it has a fixed port (plain HTTP, and `/readyz` is there
    /// even with `gateway.public_operations` off), else its API listener.
    fn health_target(&self, kind: Kind) -> (SocketAddr, bool) {
        let admin = self.config.gateway.admin_listen;
        match kind {
            Kind::Gateway if admin.port() != 0 => (probe::connect_addr(admin), false),
            Kind::Gateway => (probe::connect_addr(self.listen(kind)), self.tls()),
            Kind::Service(listen) => (probe::connect_addr(listen), false),
        }
    }

    /// The gateway's base URL.
    fn gateway_url(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!(
            "{scheme}://{}",
            probe::connect_addr(self.config.gateway.listen)
        )
    }

    /// Refuses to start when a port is taken (most often by another `weft up`): the child would
    /// fail, but a health check could first be answered by the other process.
    fn preflight(&self) -> anyhow::Result<()> {
        for slot in &self.slots {
            let addr = self.listen(slot.kind);
            if addr.port() == 0 {
                bail!(
                    "{} is configured to listen on port 0: `weft up` needs fixed ports to check \
                     health (see {})",
                    slot.name,
                    self.config_path.display()
                );
            }
            if let Err(err) = TcpListener::bind(addr) {
                bail!(
                    "{} cannot listen on {addr}: {err} (is another `weft up` or a {} still \
                     running?)",
                    slot.name,
                    slot.name
                );
            }
        }
        Ok(())
    }

    /// Says what is about to run, and where its data lives.
    fn describe(&self) {
        let databases: Vec<String> = self
            .config
            .services
            .iter()
            .filter(|(_, service)| !service.database_url.is_empty())
            .map(|(name, service)| {
                format!("{name} {}", weft_mesh::db::redact(&service.database_url))
            })
            .collect();
        self.output.info(&format!(
            "config {}; data: {}",
            self.config_path.display(),
            databases.join(", ")
        ));
    }

    /// Starts the child of `slot` and waits until it is healthy.
    async fn start(&mut self, slot: usize, signals: &mut Signals) -> anyhow::Result<Wait> {
        let name = self.slots[slot].name.clone();
        let kind = self.slots[slot].kind;
        let addr = probe::connect_addr(self.listen(kind));
        let running = self.spawn(slot)?;
        let what = match kind {
            Kind::Service(_) => format!("gRPC {addr}"),
            Kind::Gateway => format!("HTTP {}", self.gateway_url()),
        };
        self.output
            .info(&format!("starting {name} (pid {}, {what})", running.pid));
        self.slots[slot].running = Some(running);

        let started = Instant::now();
        let deadline = started + self.start_timeout;
        let mut next_progress = started + PROGRESS_EVERY;
        let (health, tls) = self.health_target(kind);
        let mut last;
        loop {
            let attempt = async {
                let result = check(kind, health, tls, &name).await;
                if result.is_err() {
                    tokio::time::sleep(PROBE_INTERVAL).await;
                }
                result
            };
            tokio::select! {
                biased;
                signal = signals.recv() => return Ok(Wait::Interrupted(signal)),
                Some(exit) = self.exit_events.recv() => {
                    if let Ok(signal) = tokio::time::timeout(SIGNAL_GRACE, signals.recv()).await {
                        self.on_stopped(&exit);
                        return Ok(Wait::Interrupted(signal));
                    }
                    let (exited, logs) = self.exited(&exit);
                    bail!(
                        "{exited} exited during start-up ({}); its last log lines:\n{logs}",
                        child::describe(&exit.status)
                    );
                }
                result = attempt => match result {
                    Ok(()) => {
                        self.output.info(&format!(
                            "{name} is healthy ({:.1}s)",
                            started.elapsed().as_secs_f64()
                        ));
                        return Ok(Wait::Healthy);
                    }
                    Err(why) => last = why,
                },
            }
            let now = Instant::now();
            if now >= deadline {
                let logs = self.slots[slot]
                    .running
                    .as_ref()
                    .map(|r| r.logs.report())
                    .unwrap_or_default();
                bail!(
                    "{name} did not become healthy within {}s (last check: {last}); its last \
                     log lines:\n{logs}",
                    self.start_timeout.as_secs()
                );
            }
            if now >= next_progress {
                self.output.info(&format!(
                    "waiting for {name} ({}s): {last}",
                    started.elapsed().as_secs()
                ));
                next_progress = now + PROGRESS_EVERY;
            }
        }
    }

    fn spawn(&self, slot: usize) -> anyhow::Result<Running> {
        let launch = Launch {
            name: &self.slots[slot].name,
            slot,
            binary: &self.slots[slot].binary,
            config: &self.config_path,
            output: self.output,
            env: &self.child_env,
        };
        Ok(child::spawn(&launch, self.exits.clone())?)
    }

    /// Forgets the process of an exit event; returns its name and a report of its last lines.
    fn exited(&mut self, exit: &Exited) -> (String, String) {
        let slot = &mut self.slots[exit.slot];
        let running = slot.running.take_if(|r| r.pid == exit.pid);
        if let Some(watch) = slot.watch.take() {
            watch.abort();
        }
        let logs = running.map(|r| r.logs.report()).unwrap_or_default();
        (slot.name.clone(), logs)
    }

    /// Says where the mesh answers.
    fn ready(&self, elapsed: Duration) {
        let url = self.gateway_url();
        let names: Vec<&str> = self.slots.iter().map(|s| s.name.as_str()).collect();
        let traces = self
            .viewer_url
            .as_ref()
            .map(|viewer| format!("\n  traces    {viewer}   (or `weft trace --last`)"))
            .unwrap_or_default();
        self.output.info(&format!(
            "ready: {} are healthy ({:.1}s)\n  REST API  {url}\n  docs      {url}/docs{traces}\n  \
             try       curl {url}/v1/products\nCtrl-C stops everything.",
            names.join(", "),
            elapsed.as_secs_f64()
        ));
    }

    /// Watches over the running mesh until a signal (then stops it: `Ok`) or until every
    /// process is gone for good (`Err`).
    async fn watch(&mut self, signals: &mut Signals) -> anyhow::Result<()> {
        loop {
            let alive = self
                .slots
                .iter()
                .any(|s| s.running.is_some() || s.restart_at.is_some());
            if !alive {
                bail!("every process has exited; nothing left to run");
            }
            let next_restart = self.slots.iter().filter_map(|s| s.restart_at).min();
            let signal = tokio::select! {
                biased;
                signal = signals.recv() => signal,
                Some(exit) = self.exit_events.recv() => {
                    match tokio::time::timeout(SIGNAL_GRACE, signals.recv()).await {
                        Ok(signal) => {
                            self.on_stopped(&exit);
                            signal
                        }
                        Err(_) => {
                            self.on_exit(exit);
                            continue;
                        }
                    }
                }
                _ = sleep_until(next_restart.unwrap_or_else(Instant::now).into()),
                    if next_restart.is_some() => {
                    self.restart_due();
                    continue;
                }
            };
            self.output.info(&format!("{signal} received: stopping"));
            self.stop_all(signals).await;
            return Ok(());
        }
    }

    /// Reports a child that exited on its own, and schedules its restart with `--restart`.
    fn on_exit(&mut self, exit: Exited) {
        let uptime = self.slots[exit.slot]
            .running
            .as_ref()
            .filter(|r| r.pid == exit.pid)
            .map(|r| r.started.elapsed());
        let Some(uptime) = uptime else {
            return; // An older process of this slot, already accounted for.
        };
        let kind = self.slots[exit.slot].kind;
        let (name, logs) = self.exited(&exit);
        self.output.warn(&format!(
            "{name} (pid {}) exited on its own: {}, after {:.1}s; its last log lines:\n{logs}",
            exit.pid,
            child::describe(&exit.status),
            uptime.as_secs_f64()
        ));
        let consequence = match kind {
            Kind::Service(_) => "the gateway answers 503 for its routes meanwhile".to_string(),
            Kind::Gateway => format!("the REST API at {} is down meanwhile", self.gateway_url()),
        };
        if self.restart {
            let slot = &mut self.slots[exit.slot];
            slot.quick_exits = if uptime >= STABLE_AFTER {
                1
            } else {
                slot.quick_exits + 1
            };
            let delay = backoff(slot.quick_exits);
            slot.restart_at = Some(Instant::now() + delay);
            self.output.warn(&format!(
                "restarting {name} in {:.1}s; {consequence}",
                delay.as_secs_f64()
            ));
        } else {
            self.output.warn(&format!(
                "the other processes keep running and {consequence}; `weft up --restart` \
                 restarts processes that exit, Ctrl-C stops everything"
            ));
        }
    }

    /// Restarts every child whose restart is due; a child that cannot even be started is tried
    /// again later.
    fn restart_due(&mut self) {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slots[slot].restart_at.is_none_or(|at| at > now) {
                continue;
            }
            self.slots[slot].restart_at = None;
            let name = self.slots[slot].name.clone();
            match self.spawn(slot) {
                Ok(running) => {
                    self.output.info(&format!(
                        "restarted {name} (pid {}, attempt {})",
                        running.pid, self.slots[slot].quick_exits
                    ));
                    self.slots[slot].running = Some(running);
                    self.slots[slot].watch = Some(self.watch_health(slot));
                }
                Err(err) => {
                    let entry = &mut self.slots[slot];
                    entry.quick_exits += 1;
                    let delay = backoff(entry.quick_exits);
                    entry.restart_at = Some(now + delay);
                    self.output.warn(&format!(
                        "{err:#}; trying again in {:.1}s",
                        delay.as_secs_f64()
                    ));
                }
            }
        }
    }

    /// Says when a restarted child is healthy again (or that it is not, after the start timeout).
    fn watch_health(&self, slot: usize) -> JoinHandle<()> {
        let (name, kind) = (self.slots[slot].name.clone(), self.slots[slot].kind);
        let (addr, tls) = self.health_target(kind);
        let (output, timeout) = (self.output, self.start_timeout);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = String::new();
            while started.elapsed() < timeout {
                match check(kind, addr, tls, &name).await {
                    Ok(()) => {
                        output.info(&format!(
                            "{name} is healthy again ({:.1}s)",
                            started.elapsed().as_secs_f64()
                        ));
                        return;
                    }
                    Err(why) => last = why,
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
            output.warn(&format!(
                "{name} is not healthy {}s after its restart (last check: {last})",
                timeout.as_secs()
            ));
        })
    }

    /// Stops every running child: SIGTERM to all, then waits for them to drain; kills those
    /// still there after the drain timeout, or at once on a second signal.
    async fn stop_all(&mut self, signals: &mut Signals) {
        for slot in &mut self.slots {
            slot.restart_at = None;
            if let Some(watch) = slot.watch.take() {
                watch.abort();
            }
        }
        // The gateway first, so that it stops taking requests for services about to go.
        for slot in self.slots.iter().rev() {
            // A child that is already gone needs no signal; one that cannot get it is killed
            // after the deadline below.
            if let Some(running) = &slot.running
                && let Err(err) = child::signal(running.pid, "TERM").await
            {
                self.output.warn(&format!(
                    "cannot send SIGTERM to {}: {err}; it will be killed",
                    slot.name
                ));
            }
        }
        let drain = Duration::from_millis(self.config.server.drain_timeout_ms) + STOP_MARGIN;
        let deadline = Instant::now() + drain;
        while self.slots.iter().any(|s| s.running.is_some()) {
            tokio::select! {
                biased;
                Some(exit) = self.exit_events.recv() => self.on_stopped(&exit),
                _ = sleep_until(deadline.into()) => {
                    self.output.warn(&format!(
                        "still running {}s after SIGTERM: killing",
                        drain.as_secs()
                    ));
                    break;
                }
                signal = signals.recv() => {
                    self.output.warn(&format!("{signal} received again: killing"));
                    break;
                }
            }
        }
        for slot in &mut self.slots {
            if let Some(running) = &mut slot.running {
                running.kill();
            }
        }
        let deadline = Instant::now() + KILL_WAIT;
        while self.slots.iter().any(|s| s.running.is_some()) {
            tokio::select! {
                Some(exit) = self.exit_events.recv() => self.on_stopped(&exit),
                _ = sleep_until(deadline.into()) => {
                    let left: Vec<String> = self
                        .slots
                        .iter()
                        .filter_map(|s| s.running.as_ref().map(|r| format!("{} (pid {})", s.name, r.pid)))
                        .collect();
                    self.output.warn(&format!("could not stop {}", left.join(", ")));
                    return;
                }
            }
        }
        self.output.info("stopped");
    }

    fn on_stopped(&mut self, exit: &Exited) {
        let known = self.slots[exit.slot]
            .running
            .as_ref()
            .is_some_and(|r| r.pid == exit.pid);
        if known {
            let (name, _) = self.exited(exit);
            self.output.info(&format!(
                "{name} stopped ({})",
                child::describe(&exit.status)
            ));
        }
    }
}

/// One health check of a child.
async fn check(kind: Kind, addr: SocketAddr, tls: bool, name: &str) -> Result<(), String> {
    match kind {
        // With mTLS on, the check presents `weft`'s certificate and expects the service's.
        Kind::Service(_) => {
            let service = name.strip_prefix("weft-").unwrap_or(name);
            probe::grpc_serving_as(addr, PROBE_TIMEOUT, service).await
        }
        // The plain HTTP probe cannot speak TLS: an accepting listener has to do.
        Kind::Gateway if tls => probe::tcp_open(addr, PROBE_TIMEOUT).await,
        Kind::Gateway => probe::gateway_ready(addr, PROBE_TIMEOUT).await,
    }
}

/// The delay before restarting a child after its `quick_exits`-th quick exit in a row: 1s, 2s,
/// 4s, ... up to 30s.
fn backoff(quick_exits: u32) -> Duration {
    let doublings = quick_exits.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF)
}

/// SIGINT (Ctrl-C) and SIGTERM.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

// === impl Signals ===

impl Signals {
    #[cfg(unix)]
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// The next signal's name.
    #[cfg(unix)]
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let delays: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn the_command_line_has_local_defaults() {
        let cli = crate::Cli::try_parse_from(["weft", "up"]).unwrap();
        let crate::Command::Up(args) = cli.command else {
            panic!("`weft up` parses as Command::Up");
        };
        if std::env::var_os(weft_mesh::config::CONFIG_ENV).is_none() {
            assert_eq!(
                args.deployment.mesh.config,
                Path::new("mesh-config/local.toml")
            );
        }
        assert!(!args.restart);
        assert_eq!(args.start_timeout, 60);
        let cli = crate::Cli::try_parse_from([
            "weft",
            "up",
            "--config",
            "x.toml",
            "--restart",
            "--bin-dir",
            "target/release",
        ])
        .unwrap();
        let crate::Command::Up(args) = cli.command else {
            panic!("`weft up` parses as Command::Up");
        };
        assert_eq!(args.deployment.mesh.config, Path::new("x.toml"));
        assert!(args.restart);
        assert_eq!(
            args.deployment.bin_dir.bin_dir.as_deref(),
            Some(Path::new("target/release"))
        );
    }
}
