//! Hot reload of mesh-config: new policies for new calls, without a restart.
//!
//! [`install`] (called by `launch`) watches the process's mesh-config file: it is read
//! again every [`POLL_INTERVAL`] and on SIGHUP, and when its contents changed it is loaded and
//! validated exactly as at start (file, then `WEFT_*` variables). A valid file replaces the
//! process's [`current`] config; every policy made with [`policy`] (timeouts, retries, breaker,
//! outlier ejection, endpoints, load shedding, rate limits, faults) follows it, and calls in
//! flight keep the policy they started with. An invalid file is rejected with a log line
//! naming the key and the reason, and the running policies stay. Settings read only at start
//! (listen addresses, databases, telemetry, keys) are logged as waiting for a
//! restart.
//!
//! Polling a single small file costs nothing measurable and works on every file system and in
//! containers with mounted config maps, where change notifications are unreliable.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use crate::{config::MeshConfig, live::Live};

/// How often the config file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Keys (or whole sections) of mesh-config that are read at start only.
const RESTART_ONLY: [&str; 11] = [
    "environment",
    "telemetry",
    "jwt",
    "services",
    "server.worker_threads",
    "server.max_message_bytes",
    "server.drain_timeout_ms",
    "server.default_deadline_ms",
    "gateway.listen",
    "gateway.tls",
    "gateway.upstream_connections",
];

static CURRENT: OnceLock<Live<MeshConfig>> = OnceLock::new();

/// Starts watching `path` (the file `config` was loaded from, if any) for changes. Must run
/// inside the tokio runtime; once per process (later calls are ignored).
pub fn install(path: Option<PathBuf>, config: Arc<MeshConfig>) {
    let live = Live::new(MeshConfig::clone(&config));
    if CURRENT.set(live.clone()).is_err() {
        return;
    }
    let Some(path) = path else {
        return;
    };
    tokio::spawn(watch(path, live));
}

/// The process's current config, when [`install`] ran.
pub fn current() -> Option<Live<MeshConfig>> {
    CURRENT.get().cloned()
}

/// A policy derived from mesh-config by `derive`, kept up to date by reloads (a fixed one when
/// nothing is watched, as in unit tests). The value is replaced only when it differs.
pub fn policy<T, F>(config: &MeshConfig, derive: F) -> Live<T>
where
    T: PartialEq + Send + Sync + 'static,
    F: Fn(&MeshConfig) -> T + Send + 'static,
{
    let live = Live::new(derive(config));
    let Some(source) = current() else {
        return live;
    };
    // The runtime may be absent (a policy built outside it): then it stays fixed.
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return live;
    };
    let target = live.clone();
    let mut changes = source.subscribe();
    handle.spawn(async move {
        while changes.changed().await.is_ok() {
            let config = changes.borrow_and_update().clone();
            let value = derive(&config);
            if *target.get() != value {
                target.set(value);
            }
        }
    });
    live
}

async fn watch(path: PathBuf, live: Live<MeshConfig>) {
    let mut last = read(&path).await;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangup = hangup_signals();
    loop {
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            _ = next_hangup(&mut hangup) => true,
        };
        let contents = read(&path).await;
        if !forced && contents == last {
            continue;
        }
        last = contents;
        reload(&path, &live).await;
    }
}

async fn read(path: &Path) -> Option<Vec<u8>> {
    tokio::fs::read(path).await.ok()
}

async fn reload(path: &Path, live: &Live<MeshConfig>) {
    let owned = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || MeshConfig::load(Some(&owned))).await;
    let config = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(err)) => {
            tracing::error!(
                file = %path.display(),
                key = err.key.as_deref().unwrap_or(""),
                reason = %err.reason,
                "mesh-config change rejected ({err}); the running policies stay"
            );
            return;
        }
        Err(err) => {
            tracing::error!(error = %err, "mesh-config reload failed");
            return;
        }
    };
    let old = live.get();
    let changed = changed_keys(&old, &config);
    if changed.is_empty() {
        return;
    }
    let waiting: Vec<&str> = changed
        .iter()
        .map(String::as_str)
        .filter(|key| {
            // A service's own settings are read by the service at start.
            old.settings.contains_key(*key)
                || config.settings.contains_key(*key)
                || RESTART_ONLY
                    .iter()
                    .any(|only| key == only || key.starts_with(&format!("{only}.")))
        })
        .collect();
    live.set(config);
    tracing::info!(
        file = %path.display(),
        keys = %changed.join(", "),
        "mesh-config reloaded: new policies apply to new calls"
    );
    if !waiting.is_empty() {
        tracing::warn!(
            keys = %waiting.join(", "),
            "these mesh-config changes take effect at the next restart"
        );
    }
}

/// The keys whose values differ, to the second level (`gateway.route_timeouts`, `faults`).
fn changed_keys(old_config: &MeshConfig, new_config: &MeshConfig) -> Vec<String> {
    let (Ok(old), Ok(new)) = (
        toml::Table::try_from(old_config),
        toml::Table::try_from(new_config),
    ) else {
        return vec!["(all)".into()];
    };
    let mut changed = Vec::new();
    let sections: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for section in sections {
        match (old.get(section), new.get(section)) {
            (a, b) if a == b => {}
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                changed.extend(
                    keys.into_iter()
                        .filter(|key| a.get(*key) != b.get(*key))
                        .map(|key| format!("{section}.{key}")),
                );
            }
            _ => changed.push(section.clone()),
        }
    }
    let services: std::collections::BTreeSet<&String> = old_config
        .settings
        .keys()
        .chain(new_config.settings.keys())
        .collect();
    changed.extend(
        services
            .into_iter()
            .filter(|name| old_config.settings.get(*name) != new_config.settings.get(*name))
            .cloned(),
    );
    changed
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signals() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signals() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(signals: &mut Hangup) {
    match signals {
        Some(signals) => {
            signals.recv().await;
        }
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_named() {
        let old = MeshConfig::default();
        let mut new = old.clone();
        new.gateway.route_timeout_ms += 1;
        new.services.insert(
            "user".into(),
            toml::from_str("listen = \"127.0.0.1:1\"").unwrap(),
        );
        new.settings.insert("order".into(), toml::Table::new());
        new.faults.push(crate::policy::FaultRule {
            delay_ms: 1,
            ..Default::default()
        });
        assert_eq!(
            changed_keys(&old, &new),
            vec![
                "faults",
                "gateway.route_timeout_ms",
                "services.user",
                "order"
            ]
        );
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[tokio::test]
    async fn a_rejected_file_keeps_the_running_config_and_a_valid_one_replaces_it() {
        let dir = std::env::temp_dir().join(format!("weft-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.toml");
        let live = Live::new(MeshConfig::default());

        std::fs::write(&path, "[gateway]\nroute_timeout_ms = 0\n").unwrap();
        reload(&path, &live).await;
        assert_eq!(
            live.get().gateway.route_timeout_ms,
            MeshConfig::default().gateway.route_timeout_ms,
            "an invalid value is refused"
        );

        std::fs::write(&path, "[gateway]\nroute_timeout_ms = 1234\n").unwrap();
        reload(&path, &live).await;
        assert_eq!(live.get().gateway.route_timeout_ms, 1234);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
