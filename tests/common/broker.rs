//! A real Kafka-protocol broker for integration tests: tansu 0.6 with its
//! SQLite storage, started on a free loopback port in a temporary directory
//! and killed when the handle drops.
//!
//! tansu 0.6's SQLite schema has no index on record headers, so every
//! fetch scans all the headers in the database for each record it returns:
//! once a few tens of thousands of records with headers are stored (scores
//! carry the model version, dead letters their origin), one fetch takes
//! longer than clients wait and the broker stops answering anyone. The
//! harness adds the missing index once tansu has created its tables.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running tansu broker.
pub struct Broker {
    process: Child,
    /// `bootstrap.servers` for clients.
    pub brokers: String,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The tansu binary: `TIDEFLOW_TANSU`, else where `scripts/setup-tansu.sh`
/// installs it. Fails, naming the command that installs it, when missing.
fn tansu_binary() -> PathBuf {
    let path = std::env::var_os("TIDEFLOW_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("TIDEFLOW_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tideflow")
                });
            cache.join("tools/tansu-0.6.0/bin/tansu")
        });
    assert!(
        path.is_file(),
        "the test broker (tansu 0.6.0) is not installed at {}.\nInstall it with: scripts/setup-tansu.sh (or run the whole suite with scripts/test.sh)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Broker {
    /// Starts a broker and waits until it listens.
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut process = Command::new(tansu_binary())
            .current_dir(dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Not memory://: its high watermarks and offsets-for-times are wrong.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let stdout = process.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while ready_rx.recv_timeout(Duration::from_millis(100)).is_err() {
            if let Ok(Some(status)) = process.try_wait() {
                panic!("tansu exited at start with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not become ready within 30 s"
            );
        }
        index_headers(&dir.path().join("tansu.db"));
        Broker {
            process,
            brokers: format!("127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

/// Adds the index on `header (topition, offset_id)` that fetches need.
fn index_headers(database: &Path) {
    let connection = rusqlite::Connection::open(database)
        .unwrap_or_else(|error| panic!("opening tansu's database {}: {error}", database.display()));
    connection
        .busy_timeout(Duration::from_secs(10))
        .expect("setting a busy timeout");
    connection
        .execute(
            "create index if not exists header_by_record on header (topition, offset_id)",
            [],
        )
        .expect("indexing tansu's record headers");
}
