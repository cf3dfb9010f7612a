//! Group commit on SQLite: one OS thread owns one rusqlite connection and commits the writes
//! waiting for it together, one transaction and one fsync per batch.
//!
//! Why it exists: sqlx runs each SQLite connection on a worker thread of its own, so a
//! transaction of five statements is five hand-offs from the service's runtime thread to that
//! worker and back, and SQLite's single write lock is held across all of them while the runtime
//! also serves other requests in between. `bench/README.md` measured it on weft-order's
//! `CreateOrder`: the lock held about 1.3 ms per order against 0.44 ms for the same transaction
//! in a bare rusqlite loop, each transaction paying its own fsync (`synchronous = FULL`).
//!
//! Here the caller hands a whole transaction body (a closure over `&rusqlite::Connection`) to
//! [`SqliteWriter::write`] and awaits its reply. The writer thread takes the first job waiting
//! (`blocking_recv`), then every other job already queued (up to its batch limit), and runs:
//!
//! ```text
//! BEGIN IMMEDIATE
//!   SAVEPOINT job; <job 1>; RELEASE job        -- kept
//!   SAVEPOINT job; <job 2>; ROLLBACK TO job; RELEASE job   -- job 2 failed or said RollBack
//!   ...
//! COMMIT                                       -- one fsync for the batch
//! ```
//!
//! then replies to every job of the batch. Each job decides its own fate ([`Outcome::Commit`]
//! or [`Outcome::RollBack`], or an error, or a panic, which roll back its savepoint alone), so
//! one job's failure never costs another its writes.
//!
//! **Nothing is acknowledged before it is durable.** A job's reply, whatever it says, is sent
//! only after the `COMMIT` of its batch returned; when that `COMMIT` (or the `BEGIN`) fails,
//! every job of the batch gets the error and none of their changes exist. A job's transaction
//! body runs whole inside one SQLite transaction, so a crash at any moment (before, during or
//! after the fsync) leaves each job entirely there or entirely absent: no partial write, and a
//! caller that saw no reply may retry (with an idempotency key) without doubling anything.
//!
//! The thread runs the closures, so they must not block on anything but SQLite, must not end
//! the transaction themselves (`COMMIT`, `ROLLBACK`, `RELEASE`), and see the changes of the jobs
//! before them in the batch (as they would after those committed). Statements of other
//! connections to the same file (a sqlx write pool, an operator's tool) take the same SQLite
//! write lock: `busy_timeout` ([`WRITE_PRAGMAS`]: five seconds) makes each side wait for the
//! other, so they serialise. A job runs inside the caller's current tracing span, so the spans it opens
//! nest under the caller's as if it had run on the caller's thread.
//!
//! Nothing here blocks an async runtime: submitting awaits room in a bounded queue (a full
//! queue holds the caller back, not memory), and the reply is a oneshot channel. Dropping the
//! future of [`SqliteWriter::write`] after its job was queued does not cancel the job: it still
//! runs and may commit, unseen. The thread ends when the last clone of its [`SqliteWriter`] is
//! dropped.
//!
//! ```ignore
//! let writer = SqliteWriter::spawn("data/order.db")?;
//! let id = writer
//!     .write(|conn| -> Result<Outcome<i64>, WriteError> {
//!         conn.execute("INSERT INTO t (v) VALUES (1)", [])?;
//!         Ok(Outcome::Commit(conn.last_insert_rowid()))
//!     })
//!     .await?;
//! ```

use std::{
    any::Any,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use rusqlite::{Connection, OpenFlags, ffi};
use tokio::sync::{mpsc, oneshot};

/// The PRAGMAs of a connection that writes a service's SQLite file, sqlx's write pool and the
/// writer thread alike.
pub const WRITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
                                 PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;";

/// Jobs that may wait for the writer at most, by default; a submitter beyond waits for room.
pub const DEFAULT_QUEUE: usize = 1024;

/// Jobs committed together at most, by default: bounds the time a batch holds the write lock.
pub const DEFAULT_BATCH: usize = 64;

/// What a job asks the writer to do with its changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Keep them; the reply `T` is sent once the batch is committed.
    Commit(T),
    /// Undo them (the job's savepoint alone); the reply `T` is sent once the batch is committed
    /// all the same, since it may rest on the changes of the jobs before it.
    RollBack(T),
}

/// Why a write did not happen, as the writer reports it (a job's own error is the job's type).
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The writer could not open its connection to the file.
    #[error("sqlite writer: cannot open {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// A statement of the batch's own (`BEGIN`, `SAVEPOINT`, `COMMIT`...) failed: nothing of
    /// the batch was kept.
    #[error("sqlite writer: {statement} failed: {source}")]
    Batch {
        /// The statement.
        statement: &'static str,
        /// Why.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// SQLite rolled the whole transaction back under a job (an I/O error, a full disk, a job
    /// that ended it): nothing of the batch was kept.
    #[error("sqlite writer: the transaction ended inside a job; the batch was rolled back")]
    Aborted,
    /// The job panicked; its changes were rolled back, the other jobs' kept.
    #[error("sqlite writer: the job panicked: {0}")]
    Panicked(String),
    /// The writer thread is gone (it could not start, or stopped).
    #[error("sqlite writer: stopped")]
    Stopped,
}

/// How many batches and jobs the writer has run since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions run (committed or not).
    pub batches: u64,
    /// Jobs run in them.
    pub jobs: u64,
    /// Jobs of the largest batch.
    pub largest_batch: u64,
}

/// The queue of a SQLite file's writer thread; clones share the thread.
#[derive(Debug, Clone)]
pub struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
    counts: Arc<Counts>,
    path: Arc<Path>,
}

/// A job as the thread sees it, whatever its reply type.
type Job = Box<dyn Pending>;

/// A job queued with its reply channel.
trait Pending: Send {
    /// Runs the job on `conn` inside its savepoint; whether its changes stay.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Sends the reply: the job's own result, or `failed` when its batch did not commit.
    fn reply(self: Box<Self>, failed: Option<WriteError>);
}

#[derive(Debug, Default)]
struct Counts {
    batches: AtomicU64,
    jobs: AtomicU64,
    largest_batch: AtomicU64,
}

// === impl SqliteWriter ===

impl SqliteWriter {
    /// Starts the writer thread of the SQLite file at `path` (which must exist: migrations
    /// made it), with [`DEFAULT_QUEUE`] and [`DEFAULT_BATCH`].
    pub fn spawn(path: impl Into<PathBuf>) -> Result<Self, std::io::Error> {
        Self::spawn_with(path, DEFAULT_QUEUE, DEFAULT_BATCH)
    }

    /// Starts the writer thread of `path` with a queue of `queue` jobs and batches of at most
    /// `batch` jobs (each at least 1).
    pub fn spawn_with(
        path: impl Into<PathBuf>,
        queue: usize,
        batch: usize,
    ) -> Result<Self, std::io::Error> {
        let path: Arc<Path> = Arc::from(path.into());
        let (jobs, queued) = mpsc::channel(queue.max(1));
        let counts = Arc::new(Counts::default());
        let thread = Thread {
            path: path.clone(),
            queued,
            batch: batch.max(1),
            counts: counts.clone(),
        };
        std::thread::Builder::new()
            .name("weft-sqlite-writer".into())
            .spawn(move || thread.run())?;
        Ok(Self { jobs, counts, path })
    }

    /// The database file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Jobs waiting for the thread, besides the batch it is running.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Batches and jobs run so far.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            batches: self.counts.batches.load(Ordering::Relaxed),
            jobs: self.counts.jobs.load(Ordering::Relaxed),
            largest_batch: self.counts.largest_batch.load(Ordering::Relaxed),
        }
    }

    /// Runs `job` in the next batch and returns its result once the batch is committed (see
    /// the module doc). The job's error, or [`WriteError`] converted into the caller's error
    /// type when the batch failed, the job panicked or the writer is gone.
    pub async fn write<T, E, F>(&self, job: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<Outcome<T>, E> + Send + 'static,
        T: Send + 'static,
        E: From<WriteError> + Send + 'static,
    {
        let (reply, replied) = oneshot::channel();
        let submitted = Submitted {
            job: Some(job),
            span: tracing::Span::current(),
            result: None,
            reply,
        };
        self.jobs
            .send(Box::new(submitted))
            .await
            .map_err(|_| E::from(WriteError::Stopped))?;
        replied.await.map_err(|_| E::from(WriteError::Stopped))?
    }
}

/// Whether `err` is a unique-constraint (or primary-key) violation, from rusqlite.
pub fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
                || failure.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

// === impl Submitted ===

/// A job, the span it was submitted in, its result once run, and where the reply goes.
struct Submitted<F, T, E> {
    job: Option<F>,
    span: tracing::Span,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> Pending for Submitted<F, T, E>
where
    F: FnOnce(&Connection) -> Result<Outcome<T>, E> + Send + 'static,
    T: Send + 'static,
    E: From<WriteError> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(job) = self.job.take() else {
            return false;
        };
        // A panicking job must not end the thread: every later caller would wait for a reply
        // that never comes. Its statements were dropped (and so reset) while unwinding, and its
        // changes go with its savepoint; nothing the job shared with the thread is left half-done.
        // (Should the thread die anyway, no caller hangs: the reply and queue channels close,
        // and callers get `Stopped`.)
        let ran = self
            .span
            .in_scope(|| catch_unwind(AssertUnwindSafe(|| job(conn))));
        let (keep, result) = match ran {
            Ok(Ok(Outcome::Commit(value))) => (true, Ok(value)),
            Ok(Ok(Outcome::RollBack(value))) => (false, Ok(value)),
            Ok(Err(err)) => (false, Err(err)),
            Err(panic) => (
                false,
                Err(WriteError::Panicked(panic_message(&panic)).into()),
            ),
        };
        self.result = Some(result);
        keep
    }

    fn reply(mut self: Box<Self>, failed: Option<WriteError>) {
        let result = match (failed, self.result.take()) {
            (Some(err), _) => Err(err.into()),
            (None, Some(result)) => result,
            // Unreachable: a committed batch ran every job. Still an answer, not a hang.
            (None, None) => Err(WriteError::Aborted.into()),
        };
        // The caller may have gone (its request was cancelled); the job's fate stands.
        let _ = self.reply.send(result);
    }
}

/// The text of a panic's payload, when it has one.
fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "(no message)".to_owned()
    }
}

// === impl Thread ===

/// What the writer thread owns.
struct Thread {
    path: Arc<Path>,
    queued: mpsc::Receiver<Job>,
    batch: usize,
    counts: Arc<Counts>,
}

impl Thread {
    /// Runs batches until every [`SqliteWriter`] is dropped.
    fn run(mut self) {
        let mut conn = None;
        let mut batch: Vec<Job> = Vec::with_capacity(self.batch);
        tracing::debug!(path = %self.path.display(), "sqlite writer started");
        while let Some(first) = self.queued.blocking_recv() {
            batch.push(first);
            while batch.len() < self.batch {
                match self.queued.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let failed = match self.connection(&mut conn) {
                Ok(conn) => commit(conn, &mut batch).err(),
                Err(err) => Some(err),
            };
            if let Some(err) = &failed {
                tracing::warn!(error = %err, jobs = batch.len(), "sqlite write batch failed");
                // Whatever broke may be the connection itself: the next batch opens a new one.
                conn = None;
            }
            self.count(batch.len());
            for job in batch.drain(..) {
                job.reply(failed.clone());
            }
        }
        tracing::debug!(path = %self.path.display(), "sqlite writer stopped");
    }

    /// The thread's connection, opened on the first batch and again after a failed open.
    fn connection<'c>(
        &self,
        conn: &'c mut Option<Connection>,
    ) -> Result<&'c Connection, WriteError> {
        if conn.is_none() {
            *conn = Some(open(&self.path).map_err(|source| WriteError::Open {
                path: self.path.to_path_buf(),
                source: Arc::new(source),
            })?);
        }
        conn.as_ref().ok_or(WriteError::Stopped)
    }

    fn count(&self, jobs: usize) {
        let jobs = jobs as u64;
        self.counts.batches.fetch_add(1, Ordering::Relaxed);
        self.counts.jobs.fetch_add(jobs, Ordering::Relaxed);
        self.counts.largest_batch.fetch_max(jobs, Ordering::Relaxed);
    }
}

/// Runs `batch` in one transaction, each job in its savepoint, and commits it. On an error the
/// transaction is rolled back whole.
fn commit(conn: &Connection, batch: &mut [Job]) -> Result<(), WriteError> {
    run(conn, "BEGIN IMMEDIATE")?;
    let done = batch.iter_mut().try_for_each(|job| {
        run(conn, "SAVEPOINT job")?;
        let keep = job.run(conn);
        if conn.is_autocommit() {
            return Err(WriteError::Aborted);
        }
        if !keep {
            run(conn, "ROLLBACK TO job")?;
        }
        run(conn, "RELEASE job")
    });
    let done = done.and_then(|()| run(conn, "COMMIT"));
    if done.is_err()
        && !conn.is_autocommit()
        && let Err(err) = conn.execute_batch("ROLLBACK")
    {
        tracing::warn!(error = %err, "sqlite writer: rollback failed");
    }
    done
}

/// Runs one of the batch's own statements (prepared once per connection).
fn run(conn: &Connection, statement: &'static str) -> Result<(), WriteError> {
    conn.prepare_cached(statement)
        .and_then(|mut prepared| prepared.execute([]))
        .map(|_| ())
        .map_err(|source| WriteError::Batch {
            statement,
            source: Arc::new(source),
        })
}

/// A read-write connection to `path` with the write settings of sqlx's write pool.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    // No SQLITE_OPEN_CREATE: the file is the one migrations made, not a new empty one. No
    // SQLITE_OPEN_URI: the path is a file name, whatever characters it holds. NO_MUTEX: the
    // connection never leaves its thread.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(WRITE_PRAGMAS)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicBool, AtomicUsize},
            mpsc as std_mpsc,
        },
        time::Duration,
    };

    use super::*;

    /// A job's error in these tests.
    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Write(#[from] WriteError),
        #[error(transparent)]
        Sqlite(#[from] rusqlite::Error),
        #[error("refused")]
        Refused,
    }

    /// A SQLite file with a table `t (v INTEGER UNIQUE)`, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "weft-sqlite-writer-{}-{}.db",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(WRITE_PRAGMAS).unwrap();
            conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL UNIQUE)")
                .unwrap();
            Self(path)
        }

        /// The values in `t`, read through a fresh connection: what is committed.
        fn committed(&self) -> Vec<i64> {
            let conn = Connection::open(&self.0).unwrap();
            let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
            stmt.query_map([], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = self.0.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
        }
    }

    fn insert(conn: &Connection, v: i64) -> rusqlite::Result<()> {
        conn.execute("INSERT INTO t (v) VALUES (?1)", [v])
            .map(|_| ())
    }

    /// Submits a job that inserts `v` and ends as `outcome` says.
    fn submit(
        writer: &SqliteWriter,
        v: i64,
        outcome: fn(i64) -> Result<Outcome<i64>, TestError>,
    ) -> tokio::task::JoinHandle<Result<i64, TestError>> {
        let writer = writer.clone();
        tokio::spawn(async move {
            writer
                .write(move |conn| {
                    insert(conn, v)?;
                    outcome(v)
                })
                .await
        })
    }

    /// [`submit`], then waits until the job is queued: jobs submitted so run in that order.
    async fn submit_queued(
        writer: &SqliteWriter,
        v: i64,
        outcome: fn(i64) -> Result<Outcome<i64>, TestError>,
    ) -> tokio::task::JoinHandle<Result<i64, TestError>> {
        let ahead = writer.queued();
        let job = submit(writer, v, outcome);
        queued(writer, ahead + 1).await;
        job
    }

    /// Occupies the writer thread with a job that waits until the returned sender is dropped
    /// (or sent to), so that the jobs submitted meanwhile queue up and form the next batch.
    async fn hold(writer: &SqliteWriter) -> (std_mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, released) = std_mpsc::channel::<()>();
        let (started, running) = oneshot::channel();
        let writer = writer.clone();
        let held = tokio::spawn(async move {
            writer
                .write(move |_| -> Result<Outcome<()>, WriteError> {
                    let _ = started.send(());
                    let _ = released.recv();
                    Ok(Outcome::Commit(()))
                })
                .await
                .unwrap();
        });
        running.await.unwrap();
        (release, held)
    }

    /// Waits until `n` jobs are queued behind the one running.
    async fn queued(writer: &SqliteWriter, n: usize) {
        while writer.queued() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_rolls_back_leaves_the_others_of_its_batch_committed() {
        let file = TempFile::new();
        let writer = SqliteWriter::spawn(&file.0).unwrap();
        let (release, held) = hold(&writer).await;
        // Three jobs queue up behind the held one and run as one batch: the middle one undoes
        // its insert, yet still answers with its value.
        let jobs = [
            submit(&writer, 1, |v| Ok(Outcome::Commit(v))),
            submit(&writer, 2, |v| Ok(Outcome::RollBack(v))),
            submit(&writer, 3, |v| Ok(Outcome::Commit(v))),
        ];
        queued(&writer, 3).await;
        drop(release);
        held.await.unwrap();
        for (job, v) in jobs.into_iter().zip(1..) {
            assert_eq!(job.await.unwrap().unwrap(), v);
        }
        assert_eq!(file.committed(), [1, 3]);
        assert_eq!(
            writer.stats(),
            WriterStats {
                batches: 2,
                jobs: 4,
                largest_batch: 3
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_errs_gets_its_error_and_only_its_changes_are_undone() {
        let file = TempFile::new();
        let writer = SqliteWriter::spawn(&file.0).unwrap();
        let (release, held) = hold(&writer).await;
        // Each queued before the next is submitted: spawned at once, the two jobs inserting 1
        // could reach the queue in either order (seen in CI: the first then met the violation).
        let one = submit_queued(&writer, 1, |v| Ok(Outcome::Commit(v))).await;
        // Inserted, then refused: the insert goes.
        let two = submit_queued(&writer, 2, |_| Err(TestError::Refused)).await;
        // A statement that fails: 1 is taken (UNIQUE) by the first job of the batch.
        let three = submit_queued(&writer, 1, |v| Ok(Outcome::Commit(v))).await;
        let four = submit_queued(&writer, 4, |v| Ok(Outcome::Commit(v))).await;
        drop(release);
        held.await.unwrap();
        assert_eq!(one.await.unwrap().unwrap(), 1);
        assert!(matches!(two.await.unwrap(), Err(TestError::Refused)));
        let duplicate = three.await.unwrap();
        assert!(
            matches!(&duplicate, Err(TestError::Sqlite(e)) if is_unique_violation(e)),
            "{duplicate:?}"
        );
        assert_eq!(four.await.unwrap().unwrap(), 4);
        assert_eq!(file.committed(), [1, 4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_is_answered_and_the_writer_goes_on() {
        let file = TempFile::new();
        let writer = SqliteWriter::spawn(&file.0).unwrap();
        let (release, held) = hold(&writer).await;
        let jobs = [
            submit(&writer, 1, |v| Ok(Outcome::Commit(v))),
            submit(&writer, 2, |_| panic!("a bug in a job")),
            submit(&writer, 3, |v| Ok(Outcome::Commit(v))),
        ];
        queued(&writer, 3).await;
        drop(release);
        held.await.unwrap();
        let [one, two, three] = jobs;
        assert_eq!(one.await.unwrap().unwrap(), 1);
        let panicked = two.await.unwrap();
        assert!(
            matches!(&panicked, Err(TestError::Write(WriteError::Panicked(m))) if m == "a bug in a job"),
            "{panicked:?}"
        );
        assert_eq!(three.await.unwrap().unwrap(), 3);
        // The thread lives on: the next batch works.
        assert_eq!(
            submit(&writer, 5, |v| Ok(Outcome::Commit(v)))
                .await
                .unwrap()
                .unwrap(),
            5
        );
        assert_eq!(file.committed(), [1, 3, 5]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_comes_only_after_its_batch_is_committed() {
        let file = TempFile::new();
        let writer = SqliteWriter::spawn(&file.0).unwrap();
        let (release, held) = hold(&writer).await;
        let first = submit(&writer, 1, |v| Ok(Outcome::Commit(v)));
        // The second job of the batch runs after the first: a fresh connection does not see
        // the first job's row yet (not committed), and the first job has had no reply yet.
        let second_ran = Arc::new(AtomicBool::new(false));
        let second = {
            let (writer, ran, path) = (writer.clone(), second_ran.clone(), file.0.clone());
            tokio::spawn(async move {
                writer
                    .write(move |_| -> Result<Outcome<Vec<i64>>, TestError> {
                        let conn = Connection::open(&path)?;
                        let seen = conn
                            .prepare("SELECT v FROM t")?
                            .query_map([], |row| row.get(0))?
                            .collect::<Result<Vec<i64>, _>>()?;
                        ran.store(true, Ordering::SeqCst);
                        Ok(Outcome::Commit(seen))
                    })
                    .await
            })
        };
        queued(&writer, 2).await;
        drop(release);
        held.await.unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        // By the time the first job is answered, the whole batch ran and its row is durable.
        assert!(second_ran.load(Ordering::SeqCst));
        assert_eq!(file.committed(), [1]);
        assert_eq!(second.await.unwrap().unwrap(), Vec::<i64>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submitters_share_batches_of_at_most_the_limit() {
        let file = TempFile::new();
        let writer = SqliteWriter::spawn_with(&file.0, 256, 8).unwrap();
        let (release, held) = hold(&writer).await;
        let jobs: Vec<_> = (0..20)
            .map(|v| submit(&writer, v, |v| Ok(Outcome::Commit(v))))
            .collect();
        queued(&writer, 20).await;
        drop(release);
        held.await.unwrap();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        assert_eq!(file.committed(), (0..20).collect::<Vec<_>>());
        // The held job alone, then 20 jobs in batches of 8, 8 and 4: four fsyncs, not 21.
        assert_eq!(
            writer.stats(),
            WriterStats {
                batches: 4,
                jobs: 21,
                largest_batch: 8
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_is_bounded_and_a_submitter_beyond_it_waits() {
        let file = TempFile::new();
        let writer = SqliteWriter::spawn_with(&file.0, 2, 64).unwrap();
        let (release, held) = hold(&writer).await;
        let jobs: Vec<_> = (0..2)
            .map(|v| submit(&writer, v, |v| Ok(Outcome::Commit(v))))
            .collect();
        queued(&writer, 2).await;
        // The queue is full: a third submitter waits for room instead of queueing.
        let third = submit(&writer, 2, |v| Ok(Outcome::Commit(v)));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!third.is_finished());
        assert_eq!(writer.queued(), 2);
        drop(release);
        held.await.unwrap();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        assert_eq!(third.await.unwrap().unwrap(), 2);
        assert_eq!(file.committed(), [0, 1, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_waits_for_another_connections_write_lock() {
        let file = TempFile::new();
        let writer = SqliteWriter::spawn(&file.0).unwrap();
        // Another connection (sqlx's write pool, say) holds the write lock for a while.
        let other = Connection::open(&file.0).unwrap();
        other.execute_batch(WRITE_PRAGMAS).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        insert(&other, 10).unwrap();
        let job = submit(&writer, 11, |v| Ok(Outcome::Commit(v)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!job.is_finished(), "the writer must wait, not fail");
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(job.await.unwrap().unwrap(), 11);
        assert_eq!(file.committed(), [10, 11]);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_opened_is_an_error_for_each_job() {
        let path = std::env::temp_dir().join("weft_sqlite_writer_no_such_dir/x.db");
        let writer = SqliteWriter::spawn(&path).unwrap();
        for _ in 0..2 {
            let err = writer
                .write(|_| -> Result<Outcome<()>, WriteError> { Ok(Outcome::Commit(())) })
                .await
                .unwrap_err();
            assert!(matches!(err, WriteError::Open { .. }), "{err}");
        }
    }

    #[test]
    fn unique_violations_are_told_from_other_errors() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE u (k TEXT PRIMARY KEY, v INTEGER UNIQUE)")
            .unwrap();
        conn.execute("INSERT INTO u VALUES ('a', 1)", []).unwrap();
        let key = conn
            .execute("INSERT INTO u VALUES ('a', 2)", [])
            .unwrap_err();
        let value = conn
            .execute("INSERT INTO u VALUES ('b', 1)", [])
            .unwrap_err();
        let other = conn.execute("INSERT INTO nope VALUES (1)", []).unwrap_err();
        assert!(is_unique_violation(&key) && is_unique_violation(&value));
        assert!(!is_unique_violation(&other));
    }
}
