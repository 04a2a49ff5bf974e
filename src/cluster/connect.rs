//! Joining the processes of a cluster: one TCP connection between each
//! pair, handed to timely's communication layer.
//!
//! timely can make these connections itself, but it polls for them once a
//! second: a process that reaches a peer before the peer listens tries
//! again a second later, and a listener that finds no connection waiting
//! sleeps a second before looking again. Every cluster start (and every
//! restart after a failure) then waited one to three seconds before its
//! first record. Here a listener blocks until a peer arrives, and a peer
//! not yet listening is tried again every few milliseconds. The handshake
//! is timely's: the connecting process sends its index as a big-endian
//! `u64`, and the lower index connects to the higher.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use timely::communication::allocator::ProcessBuilder;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::{AllocatorBuilder, Hooks};

/// How soon a process tries again to reach a peer that is not listening.
const RETRY: Duration = Duration::from_millis(10);

/// After how long without reaching a peer the process says it is waiting.
const WAITING_NOTICE: Duration = Duration::from_secs(5);

/// timely's allocators for `workers` threads of process `process`, over
/// connections to every other process at `addresses`, and the guard that
/// keeps the connections' threads running.
pub fn allocators(
    addresses: &[String],
    process: usize,
    workers: usize,
) -> Result<(Vec<AllocatorBuilder>, Box<dyn std::any::Any + Send>), String> {
    let sockets = peer_sockets(addresses, process)
        .map_err(|error| format!("cannot connect process {process} to its peers: {error}"))?;
    let hooks = Hooks::default();
    let process_allocators =
        ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) =
        initialize_networking_from_sockets(process_allocators, sockets, process, workers, hooks)
            .map_err(|error| format!("cannot start the cluster's connections: {error}"))?;
    Ok((
        builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
        Box::new(guard),
    ))
}

/// One connection per other process, in process order (`None` for this
/// one): made to each lower index, accepted from each higher.
fn peer_sockets(addresses: &[String], process: usize) -> std::io::Result<Vec<Option<TcpStream>>> {
    let listener = TcpListener::bind(&addresses[process])?;
    let higher = addresses.len() - process - 1;
    let accepting = std::thread::Builder::new()
        .name("tideflow:accept".into())
        .spawn(move || accept_peers(&listener, process, higher))?;
    let mut sockets = Vec::with_capacity(addresses.len());
    for (peer, address) in addresses[..process].iter().enumerate() {
        sockets.push(Some(connect_to(peer, address, process)?));
    }
    sockets.push(None);
    let accepted = accepting
        .join()
        .map_err(|_| std::io::Error::other("the thread accepting peers failed"))??;
    sockets.extend(accepted);
    Ok(sockets)
}

/// Connects to process `peer` at `address`, trying again until it listens,
/// and says who this is.
fn connect_to(peer: usize, address: &str, process: usize) -> std::io::Result<TcpStream> {
    let since = Instant::now();
    let mut told = false;
    loop {
        match TcpStream::connect(address) {
            Ok(mut stream) => {
                stream.set_nodelay(true)?;
                stream.write_all(&(process as u64).to_be_bytes())?;
                return Ok(stream);
            }
            Err(error) => {
                if !told && since.elapsed() >= WAITING_NOTICE {
                    eprintln!("tideflow: waiting for process {peer} at {address} ({error})");
                    told = true;
                }
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// Accepts the `count` processes after `process`, each placed by the index
/// it sends.
fn accept_peers(
    listener: &TcpListener,
    process: usize,
    count: usize,
) -> std::io::Result<Vec<Option<TcpStream>>> {
    let mut peers: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        let (mut stream, from) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut index = [0; 8];
        stream.read_exact(&mut index)?;
        let peer = u64::from_be_bytes(index) as usize;
        let place = peer
            .checked_sub(process + 1)
            .and_then(|place| peers.get_mut(place))
            .filter(|place| place.is_none())
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{from} says it is process {peer}, which process {process} does not expect"
                ))
            })?;
        *place = Some(stream);
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three processes started a quarter second apart in reverse order (so
    /// each reaches a peer not yet listening) are joined, each pair by one
    /// connection from the higher index to the lower one's address.
    #[test]
    fn processes_started_apart_join_each_pair_once() {
        let addresses: Vec<String> = (0..3)
            .map(|_| {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().to_string()
            })
            .collect();
        let joins: Vec<_> = (0..3)
            .rev()
            .map(|process| {
                let addresses = addresses.clone();
                let handle = std::thread::spawn(move || peer_sockets(&addresses, process));
                std::thread::sleep(Duration::from_millis(250));
                (process, handle)
            })
            .collect();
        for (process, handle) in joins {
            let sockets = handle.join().unwrap().unwrap();
            assert_eq!(sockets.len(), 3);
            for (peer, socket) in sockets.iter().enumerate() {
                assert_eq!(socket.is_none(), peer == process, "process {process}");
                if let Some(socket) = socket {
                    let listening = if peer < process {
                        socket.peer_addr()
                    } else {
                        socket.local_addr()
                    };
                    assert_eq!(
                        listening.unwrap().to_string(),
                        addresses[peer.min(process)],
                        "process {process}, peer {peer}"
                    );
                }
            }
        }
    }
}
