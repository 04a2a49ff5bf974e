//! Cluster mode: one run over N worker processes joined by timely
//! dataflow's TCP communication (over connections made by [`connect`]),
//! on one machine or many.
//!
//! Each process runs W worker threads; timely numbers the N×W workers of
//! the cluster, and everything that assigns work by worker index (source
//! partitions, the exchange by key, output file names) spans the whole
//! cluster. What timely does not share, this module does: the source
//! watermarks idle workers follow (gossiped in a side dataflow), the counts
//! of the run summary (gathered to process 0 at the end), the agreement
//! on each checkpoint (messages to and from process 0, in a side dataflow
//! of their own: [`CheckpointControl`]), and the failure
//! of a peer (a process whose connection to another is lost stops at once,
//! naming the process that is gone, instead of waiting for it forever).

mod connect;

use crate::checkpoint::Coordinator;
use crate::checkpoint::agreement::{Addressed, Control};
use crate::run::{Counts, Shared};
use crate::{Error, Result};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use timely::communication::AllocatorBuilder;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Exchange, Input, Inspect};
use timely::worker::Worker;

/// The exit status of a process that stops because a peer is gone.
pub const PEER_LOST_EXIT: i32 = 3;

/// Where this process stands in a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index, `0..processes`.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
}

impl Cluster {
    /// Process `process` of `processes`, with addresses read from a hosts
    /// file: one `host:port` a line, in process order (blank lines and
    /// lines starting with `#` are skipped).
    pub fn from_hosts_file(path: &Path, processes: usize, process: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Error::Cluster(format!(
                "cannot read hosts file {}: {error}",
                path.display()
            ))
        })?;
        let addresses: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let cluster = Cluster {
            processes,
            process,
            addresses,
        };
        cluster.validate().map_err(|message| {
            Error::Cluster(format!("hosts file {}: {message}", path.display()))
        })?;
        Ok(cluster)
    }

    /// Checks that the cluster's numbers agree with its addresses.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.processes == 0 {
            return Err("--processes must be at least 1".into());
        }
        if self.process >= self.processes {
            return Err(format!(
                "--process {} is not in 0..{} (--processes {})",
                self.process, self.processes, self.processes
            ));
        }
        if self.addresses.len() != self.processes {
            return Err(format!(
                "it lists {} addresses for {} processes; write one host:port a line, one per process",
                self.addresses.len(),
                self.processes
            ));
        }
        if let Some(bad) = self.addresses.iter().find(|address| {
            address
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        }) {
            return Err(format!("'{bad}' is not host:port"));
        }
        Ok(())
    }

    /// timely's allocators for this process with `workers` threads, once
    /// it is connected to every other process (see [`connect`]), and the
    /// guard of the connections.
    pub fn connect(
        &self,
        workers: usize,
    ) -> std::result::Result<(Vec<AllocatorBuilder>, Box<dyn std::any::Any + Send>), String> {
        connect::allocators(&self.addresses, self.process, workers)
    }

    /// A label for messages: `process I of N`.
    pub fn label(&self) -> String {
        format!("process {} of {}", self.process, self.processes)
    }
}

/// Makes the loss of a peer stop this process with a message that names
/// the peer. timely's network threads (named `timely:recv-K` and
/// `timely:send-K` for peer process K) panic when a connection breaks; the
/// workers would otherwise wait forever for progress from the peer.
pub fn stop_when_a_peer_is_lost(cluster: &Cluster) {
    let label = cluster.label();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let peer = thread
            .name()
            .and_then(|name| {
                name.strip_prefix("timely:recv-")
                    .or_else(|| name.strip_prefix("timely:send-"))
            })
            .and_then(|peer| peer.parse::<usize>().ok());
        match peer {
            Some(peer) => {
                eprintln!(
                    "tideflow: {label}: lost the connection to process {peer} ({}); \
                     process {peer} has stopped or is unreachable, so the cluster cannot go on. \
                     Offsets are committed up to what every sink made durable: restart the \
                     cluster with --from committed to resume.",
                    panic_message(info)
                );
                std::process::exit(PEER_LOST_EXIT);
            }
            None => previous(info),
        }
    }));
}

fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// A worker index and its watermark (`None`: none of its partitions holds
/// one back).
type GossipInput = InputHandle<u64, CapacityContainerBuilder<Vec<(usize, Option<i64>)>>>;

/// Shares source watermarks across processes: each worker sends its own
/// whenever it changes, and every process records those of the workers of
/// other processes, so that a worker whose partitions are all idle follows
/// the slowest active watermark of the whole cluster, not only of its own
/// process.
pub struct WatermarkGossip {
    input: Option<GossipInput>,
    worker: usize,
    last_sent: Option<Option<i64>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WatermarkGossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatermarkGossip")
            .field("worker", &self.worker)
            .field("last_sent", &self.last_sent)
            .finish()
    }
}

impl WatermarkGossip {
    /// Builds the gossip dataflow of one worker; `local` is the range of
    /// worker indexes of this process, whose watermarks it knows already.
    pub fn build(worker: &mut Worker, shared: Arc<Shared>, local: std::ops::Range<usize>) -> Self {
        let index = worker.index();
        let receiver = shared.clone();
        let input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Vec<(usize, Option<i64>)>>();
            stream.broadcast().inspect(move |(from, watermark)| {
                if !local.contains(from) {
                    receiver.watermarks.publish(*from, *watermark);
                }
            });
            input
        });
        WatermarkGossip {
            input: Some(input),
            worker: index,
            last_sent: None,
            shared,
        }
    }

    /// Sends this worker's watermark if it changed since last sent.
    pub fn share(&mut self) {
        let Some(input) = &mut self.input else {
            return;
        };
        let current = self.shared.watermarks.of(self.worker);
        if self.last_sent != Some(current) {
            input.send((self.worker, current));
            self.last_sent = Some(current);
            send_now(input);
        }
    }

    /// Sends the last watermark and closes the gossip, once the run's own
    /// dataflow is over (the worker then finishes once every worker has).
    pub fn close(&mut self) {
        self.share();
        self.input = None;
    }
}

/// What a worker of a cluster exchanges with the other processes beside
/// the run's own data: source watermarks, and the checkpoint agreement
/// of a checkpointed run.
#[derive(Debug)]
pub struct ClusterLinks {
    gossip: WatermarkGossip,
    checkpoints: Option<CheckpointControl>,
}

impl ClusterLinks {
    /// Builds the side dataflows of one worker; `local` is the range of
    /// worker indexes of this process.
    pub fn build(worker: &mut Worker, shared: Arc<Shared>, local: std::ops::Range<usize>) -> Self {
        let first = worker.index() == local.start;
        let workers = local.len();
        let checkpoints = shared.checkpoints.clone();
        let gossip = WatermarkGossip::build(worker, shared, local);
        let checkpoints = checkpoints
            .map(|coordinator| CheckpointControl::build(worker, coordinator, workers, first));
        ClusterLinks {
            gossip,
            checkpoints,
        }
    }

    /// Sends what changed, after a step of the worker; `run_done` says
    /// whether the run's own dataflow has finished, `failed` whether the
    /// run has.
    pub fn after_step(&mut self, run_done: bool, failed: bool) {
        if run_done {
            self.gossip.close();
        } else {
            self.gossip.share();
        }
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.pump(failed);
        }
    }
}

/// A checkpoint message and the worker it goes to.
type ControlInput = InputHandle<u64, CapacityContainerBuilder<Vec<(usize, Control)>>>;

/// Carries the checkpoint agreement between processes (see
/// [`crate::checkpoint::agreement`]): the first worker of each process
/// sends its coordinator's messages, each to the first worker of the
/// process it is for, and hands the messages it receives to its
/// coordinator.
pub struct CheckpointControl {
    /// The first worker's input; `None` on the other workers, and once
    /// the last checkpoint has committed.
    input: Option<ControlInput>,
    coordinator: Arc<Coordinator>,
    /// Workers per process: process `P`'s first worker is `P` times this.
    workers: usize,
}

impl std::fmt::Debug for CheckpointControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointControl")
            .field("open", &self.input.is_some())
            .field("workers", &self.workers)
            .finish()
    }
}

impl CheckpointControl {
    /// Builds the control dataflow of one worker of a process with
    /// `workers` workers; `first` says whether it is the process's first.
    pub fn build(
        worker: &mut Worker,
        coordinator: Arc<Coordinator>,
        workers: usize,
        first: bool,
    ) -> Self {
        let receiver = coordinator.clone();
        let input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Vec<(usize, Control)>>();
            stream
                .exchange(|(to, _)| *to as u64)
                .inspect(move |(_, control)| receiver.receive(control.clone()));
            input
        });
        CheckpointControl {
            input: first.then_some(input),
            coordinator,
            workers,
        }
    }

    /// Sends what the coordinator has to say; closes once the last
    /// checkpoint has committed or the run has failed (the worker then
    /// finishes once every process has).
    pub fn pump(&mut self, failed: bool) {
        let Some(input) = &mut self.input else {
            return;
        };
        let messages = self.coordinator.take_messages();
        if !messages.is_empty() {
            for Addressed { to, control } in messages {
                input.send((to * self.workers, control));
            }
            send_now(input);
        }
        if failed || self.coordinator.final_committed() {
            self.input = None;
        }
    }
}

/// Sends what `input` holds now. An input handle keeps what it is given
/// until its buffer fills or its time moves, and the exchange after it
/// until its epoch closes: moving to the next time does both.
fn send_now<D>(input: &mut InputHandle<u64, CapacityContainerBuilder<Vec<D>>>)
where
    D: Clone + 'static,
{
    let next = input.time() + 1;
    input.advance_to(next);
}

/// Gathers every process's counts at worker 0 once the run is over.
/// `counts` is this process's counts, given by one worker of the process;
/// worker 0 returns all of them (one per process), the others nothing.
pub fn gather_counts(worker: &mut Worker, counts: Option<Counts>) -> Vec<Counts> {
    let gathered = Rc::new(RefCell::new(Vec::new()));
    let collected = gathered.clone();
    let mut input = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<Vec<Counts>>();
        stream
            .exchange(|_| 0)
            .inspect(move |counts| collected.borrow_mut().push(*counts));
        input
    });
    if let Some(counts) = counts {
        input.send(counts);
    }
    drop(input);
    while worker.step_or_park(None) {}
    gathered.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str, processes: usize, process: usize) -> Result<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, text).unwrap();
        Cluster::from_hosts_file(&path, processes, process)
    }

    #[test]
    fn a_hosts_file_lists_one_address_per_process() {
        let cluster = hosts("# cluster\n127.0.0.1:7000\n\n127.0.0.1:7001\n", 2, 1).unwrap();
        assert_eq!(cluster.addresses, ["127.0.0.1:7000", "127.0.0.1:7001"]);
        assert_eq!(cluster.label(), "process 1 of 2");
    }

    #[test]
    fn a_hosts_file_that_does_not_fit_says_why() {
        let error = hosts("127.0.0.1:7000\n", 2, 0).unwrap_err().to_string();
        assert!(error.contains("1 addresses for 2 processes"), "{error}");
        let error = hosts("127.0.0.1:7000\nlocalhost\n", 2, 0)
            .unwrap_err()
            .to_string();
        assert!(error.contains("'localhost' is not host:port"), "{error}");
        let error = hosts("a:1\nb:2\n", 2, 2).unwrap_err().to_string();
        assert!(error.contains("--process 2 is not in 0..2"), "{error}");
        let missing = Cluster::from_hosts_file(Path::new("/nonexistent/hosts"), 2, 0);
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("cannot read hosts file")
        );
    }
}
