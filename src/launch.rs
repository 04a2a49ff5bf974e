//! `tideflow launch`: starts the N processes of one cluster on this
//! machine, on free loopback ports, and runs them as one command.
//!
//! Each process is `tideflow run SPEC --processes N --process I --hosts
//! FILE` with the launcher's other run options. Their output lines come
//! out prefixed with `[pI]`. Ctrl-C or SIGTERM is forwarded to every
//! process once per signal (the processes run in their own process group,
//! so a terminal's Ctrl-C reaches them only through the launcher, exactly
//! once): the first drains and stops the run, a second quits at once. The
//! launcher exits non-zero if any process fails, naming the first that did;
//! the others, which lose their connection to it, are given a few seconds
//! to stop on their own and are then killed.

use crate::cluster::PEER_LOST_EXIT;
use crate::{Error, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long the other processes have to stop on their own after one
/// failed, before they are killed.
const FAILURE_GRACE: Duration = Duration::from_secs(10);

/// What to launch.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// The tideflow executable each process runs.
    pub program: PathBuf,
    /// The dataflow spec.
    pub spec: PathBuf,
    /// Processes in the cluster.
    pub processes: usize,
    /// Worker threads per process.
    pub workers: usize,
    /// Further `tideflow run` arguments, given to every process.
    pub run_args: Vec<String>,
    /// Where process 0 serves metrics; process I serves them on the port
    /// plus I.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where process 0 serves the admin API; process I on the port plus I.
    pub admin: Option<std::net::SocketAddr>,
}

/// One launched process and how it ended.
struct Member {
    index: usize,
    child: Child,
    exit: Option<ExitStatus>,
    relays: Vec<std::thread::JoinHandle<()>>,
}

/// Launches the cluster and waits for every process. `interrupts` counts
/// the Ctrl-C/SIGTERM signals the launcher received; each new one is
/// forwarded to every process still running.
pub fn launch(options: &LaunchOptions, interrupts: &AtomicUsize) -> Result<()> {
    if options.processes == 0 {
        return Err(Error::Cluster("--processes must be at least 1".into()));
    }
    let addresses = free_loopback_addresses(options.processes)?;
    let workdir = launch_directory()?;
    let hosts = workdir.join("hosts");
    std::fs::write(&hosts, addresses.join("\n") + "\n")
        .map_err(|error| Error::Cluster(format!("cannot write {}: {error}", hosts.display())))?;
    eprintln!(
        "tideflow launch: {} processes x {} workers on {}",
        options.processes,
        options.workers,
        addresses.join(", ")
    );
    let mut members = Vec::with_capacity(options.processes);
    for index in 0..options.processes {
        match start_member(options, index, &hosts) {
            Ok(member) => members.push(member),
            Err(error) => {
                stop_all(&mut members, Signal::SIGKILL);
                wait_all(&mut members);
                let _ = std::fs::remove_dir_all(&workdir);
                return Err(error);
            }
        }
    }
    let outcome = supervise(&mut members, interrupts);
    let _ = std::fs::remove_dir_all(&workdir);
    outcome
}

/// Addresses on 127.0.0.1 that were free a moment ago: listeners are bound
/// to port 0 together (so the ports differ) and closed again for the
/// processes to bind.
fn free_loopback_addresses(count: usize) -> Result<Vec<String>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|error| Error::Cluster(format!("cannot find a free loopback port: {error}")))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.to_string()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|error| Error::Cluster(format!("cannot find a free loopback port: {error}")))
}

/// A fresh directory for the hosts file.
fn launch_directory() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("tideflow-launch-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|error| Error::Cluster(format!("cannot create {}: {error}", dir.display())))?;
    Ok(dir)
}

fn start_member(options: &LaunchOptions, index: usize, hosts: &Path) -> Result<Member> {
    let mut child = Command::new(&options.program)
        .arg("run")
        .arg(&options.spec)
        .args(["--processes", &options.processes.to_string()])
        .args(["--process", &index.to_string()])
        .arg("--hosts")
        .arg(hosts)
        .args(["--workers", &options.workers.to_string()])
        .args(&options.run_args)
        .args(options.metrics.iter().flat_map(|address| {
            let mut address = *address;
            address.set_port(address.port() + index as u16);
            ["--metrics".to_owned(), address.to_string()]
        }))
        .args(options.admin.iter().flat_map(|address| {
            let mut address = *address;
            address.set_port(address.port() + index as u16);
            ["--admin".to_owned(), address.to_string()]
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Signals reach the process through the launcher only, once each.
        .process_group(0)
        .spawn()
        .map_err(|error| {
            Error::Cluster(format!(
                "cannot start process {index} ({}): {error}",
                options.program.display()
            ))
        })?;
    eprintln!("tideflow launch: process {index} is pid {}", child.id());
    let prefix = format!("[p{index}] ");
    let mut relays = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let prefix = prefix.clone();
        relays.push(std::thread::spawn(move || {
            relay_lines(stdout, &prefix, &mut std::io::stdout())
        }));
    }
    if let Some(stderr) = child.stderr.take() {
        relays.push(std::thread::spawn(move || {
            relay_lines(stderr, &prefix, &mut std::io::stderr())
        }));
    }
    Ok(Member {
        index,
        child,
        exit: None,
        relays,
    })
}

/// Copies lines from a process's output to ours, each behind `prefix`.
fn relay_lines(from: impl std::io::Read, prefix: &str, to: &mut dyn Write) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let mut text = prefix.as_bytes().to_vec();
                text.extend_from_slice(&line);
                // Whole lines in one write, so that processes do not interleave mid-line.
                let _ = to.write_all(&text);
            }
        }
    }
}

/// Waits for every process, forwarding signals, and stops the others once
/// one fails.
fn supervise(members: &mut [Member], interrupts: &AtomicUsize) -> Result<()> {
    let mut forwarded = 0;
    let mut first_failure: Option<(usize, ExitStatus)> = None;
    let mut failed_at: Option<Instant> = None;
    let mut killed = false;
    while members.iter().any(|member| member.exit.is_none()) {
        let received = interrupts.load(Ordering::SeqCst);
        if received > forwarded {
            forwarded = received;
            stop_all(members, Signal::SIGTERM);
        }
        for member in members.iter_mut().filter(|member| member.exit.is_none()) {
            if let Ok(Some(status)) = member.child.try_wait() {
                member.exit = Some(status);
                if !status.success() {
                    eprintln!(
                        "tideflow launch: process {} {}",
                        member.index,
                        describe_exit(status)
                    );
                    let is_cause = status.code() != Some(PEER_LOST_EXIT);
                    let known_cause = first_failure
                        .is_some_and(|(_, first)| first.code() != Some(PEER_LOST_EXIT));
                    if first_failure.is_none() || (is_cause && !known_cause) {
                        first_failure = Some((member.index, status));
                    }
                    failed_at.get_or_insert_with(Instant::now);
                }
            }
        }
        if !killed && failed_at.is_some_and(|at| at.elapsed() >= FAILURE_GRACE) {
            eprintln!(
                "tideflow launch: killing the processes still running {FAILURE_GRACE:?} after a failure"
            );
            stop_all(members, Signal::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_all(members);
    match first_failure {
        None => Ok(()),
        Some((index, status)) => Err(Error::Cluster(format!(
            "process {index} of {} {}; the cluster stopped. Restart it with --from committed to resume",
            members.len(),
            describe_exit(status)
        ))),
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) if code == PEER_LOST_EXIT => {
            format!("stopped (exit status {code}): it lost a peer")
        }
        (Some(code), _) => format!("failed (exit status {code})"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended abnormally".into(),
    }
}

/// Sends `signal` to every process still running.
fn stop_all(members: &mut [Member], signal: Signal) {
    for member in members.iter_mut().filter(|member| member.exit.is_none()) {
        let _ = kill(Pid::from_raw(member.child.id() as i32), signal);
    }
}

/// Reaps every process and lets the relays print the last lines.
fn wait_all(members: &mut [Member]) {
    for member in members.iter_mut() {
        if member.exit.is_none() {
            member.exit = member.child.wait().ok();
        }
        for relay in member.relays.drain(..) {
            let _ = relay.join();
        }
    }
}

/// Counts Ctrl-C and SIGTERM signals for [`launch`].
pub fn count_interrupts() -> Result<Arc<AtomicUsize>> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    ctrlc::set_handler(move || {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ntideflow launch: stopping every process: finishing the records already read \
                 (Ctrl-C again to quit at once)"
            );
        }
    })
    .map_err(|error| Error::Cluster(format!("cannot install the Ctrl-C handler: {error}")))?;
    Ok(count)
}
