//! One child process of `weft up`: started with `--config`, its output read line by line,
//! printed with its prefix and kept (the last [`LOG_TAIL`] lines) for crash reports, and its
//! exit reported as an [`Exited`] event.

use std::{
    collections::VecDeque,
    io,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::Command,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::output::Output;

/// How many of a child's last log lines are kept.
pub const LOG_TAIL: usize = 50;

/// How long, after a child exits, its remaining output may take to be read.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// The last lines a child wrote (standard output and error, in arrival order).
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<VecDeque<String>>>);

// === impl Logs ===

impl Logs {
    /// Keeps `line`, dropping the oldest beyond [`LOG_TAIL`].
    pub fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == LOG_TAIL {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect()
    }

    /// The kept lines as an indented block for a report, or a note that there were none.
    pub fn report(&self) -> String {
        let lines = self.tail();
        if lines.is_empty() {
            return "  (it wrote nothing)".into();
        }
        lines
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A child exited; sent once per started process.
#[derive(Debug)]
pub struct Exited {
    /// The child's slot (its index in start order).
    pub slot: usize,
    /// Its process id.
    pub pid: u32,
    /// How it ended; `Err` when waiting for it failed.
    pub status: io::Result<ExitStatus>,
}

/// A started child process.
#[derive(Debug)]
pub struct Running {
    /// Its process id.
    pub pid: u32,
    /// Its last log lines.
    pub logs: Logs,
    /// When it was started.
    pub started: Instant,
    /// Asks the task that owns the process to kill it (SIGKILL), with no outside command.
    kill: Option<oneshot::Sender<()>>,
}

// === impl Running ===

impl Running {
    /// Kills the process at once (SIGKILL on Unix); its [`Exited`] event follows.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// How to start one child.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    /// Process name (`weft-order`), also the prefix of its lines.
    pub name: &'a str,
    /// The child's slot (its index in start order), for events and colours.
    pub slot: usize,
    /// The executable.
    pub binary: &'a Path,
    /// The mesh-config file, passed as `--config`.
    pub config: &'a Path,
    /// Where its lines go.
    pub output: Output,
    /// Variables set for it beyond `weft up`'s own (the trace viewer's `OTEL_*`).
    pub env: &'a [(String, String)],
}

/// Starts the child; its exit is sent on `exits` once its output has been read to the end.
pub fn spawn(launch: &Launch<'_>, exits: mpsc::UnboundedSender<Exited>) -> io::Result<Running> {
    let mut command = Command::new(launch.binary);
    command
        .arg("--config")
        .arg(launch.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Should `weft up` fail before it stops its children, they go with it.
        .kill_on_drop(true);
    if !launch.output.colour() {
        command.env("NO_COLOR", "1");
    }
    command.envs(launch.env.iter().map(|(name, value)| (name, value)));
    let mut child = command.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot start {}: {e}", launch.binary.display()),
        )
    })?;
    let pid = child.id().unwrap_or_default();
    let logs = Logs::default();
    let readers: Vec<JoinHandle<()>> = [
        child.stdout.take().map(|s| read_lines(s, launch, &logs)),
        child.stderr.take().map(|s| read_lines(s, launch, &logs)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let slot = launch.slot;
    let (kill, mut kill_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            Ok(()) = &mut kill_rx => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        // The pipes close when the process is gone; read what is left so a report has it.
        for reader in readers {
            let _ = tokio::time::timeout(OUTPUT_DRAIN, reader).await;
        }
        let _ = exits.send(Exited { slot, pid, status });
    });
    Ok(Running {
        pid,
        logs,
        started: Instant::now(),
        kill: Some(kill),
    })
}

/// Prints and keeps every line of `stream` until it closes.
fn read_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    launch: &Launch<'_>,
    logs: &Logs,
) -> JoinHandle<()> {
    let (name, slot, output, logs) = (
        launch.name.to_owned(),
        launch.slot,
        launch.output,
        logs.clone(),
    );
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = output.clean(&String::from_utf8_lossy(&buf));
                    output.child_line(&name, slot, &line);
                    logs.push(line);
                }
            }
        }
    })
}

/// Sends `signal` (`TERM`, `KILL`, or `0` to check that it exists) to the process `pid` with the shell's `kill` built-in (there
/// is no signal API in std, and a `kill` executable is not installed everywhere). `Ok(false)`
/// when `kill` failed, most often because the process has just exited by itself.
pub async fn signal(pid: u32, signal: &str) -> io::Result<bool> {
    let status = Command::new("sh")
        .args(["-c", "kill -s \"$0\" \"$1\"", signal])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    Ok(status.success())
}

/// How a process ended, in words: `exit code 1`, `killed by signal 9 (SIGKILL)`.
pub fn describe(status: &io::Result<ExitStatus>) -> String {
    let status = match status {
        Ok(status) => status,
        Err(e) => return format!("unknown status ({e})"),
    };
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(number) = status.signal() {
            return match signal_name(number) {
                Some(name) => format!("killed by signal {number} ({name})"),
                None => format!("killed by signal {number}"),
            };
        }
    }
    status.to_string()
}

/// Names of the signals a crashed or stopped child most likely got.
fn signal_name(number: i32) -> Option<&'static str> {
    Some(match number {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// The path of the `name` executable in `dir`.
pub fn binary_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_keep_the_last_lines() {
        let logs = Logs::default();
        assert_eq!(logs.report(), "  (it wrote nothing)");
        for i in 0..LOG_TAIL + 7 {
            logs.push(format!("line {i}"));
        }
        let tail = logs.tail();
        assert_eq!(tail.len(), LOG_TAIL);
        assert_eq!(tail[0], "line 7");
        assert!(
            logs.report()
                .ends_with(&format!("  | line {}", LOG_TAIL + 6))
        );
    }

    #[cfg(unix)]
    #[test]
    fn statuses_read_well() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(&Ok(ExitStatus::from_raw(1 << 8))), "exit code 1");
        assert_eq!(
            describe(&Ok(ExitStatus::from_raw(9))),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe(&Ok(ExitStatus::from_raw(64))),
            "killed by signal 64"
        );
    }

    #[tokio::test]
    async fn signalling_a_process_that_is_gone_says_so() {
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        assert!(!signal(pid, "TERM").await.unwrap());
        assert!(signal(std::process::id(), "0").await.unwrap());
    }

    #[tokio::test]
    async fn a_child_is_read_to_the_end_and_reported() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A stand-in for a service: echoes its arguments, writes to both streams, fails.
        let dir = std::env::temp_dir().join(format!("weft-child-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("fake");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"args: $*\"\necho oops >&2\nexit 3\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let launch = Launch {
            name: "weft-fake",
            slot: 0,
            binary: &script,
            config: Path::new("mesh.toml"),
            output: Output::with_colour(false),
            env: &[],
        };
        let running = spawn(&launch, tx).unwrap();
        let exited = rx.recv().await.unwrap();
        assert_eq!(exited.pid, running.pid);
        assert_eq!(describe(&exited.status), "exit code 3");
        let mut tail = running.logs.tail();
        tail.sort();
        assert_eq!(tail, ["args: --config mesh.toml", "oops"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
