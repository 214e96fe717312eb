//! The programs' debug log lines (router-ebpf's `log` feature), forwarded
//! to the daemon's log: built only with router-user's `bpf-log` feature,
//! for debugging; release builds carry no logging code in the programs.

use aya::Ebpf;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

/// Reads the object's log ring while it lives; stops when dropped.
pub struct Forwarder(JoinHandle<()>);

impl Forwarder {
    /// Starts forwarding `ebpf`'s log lines (through the `log` facade,
    /// which the daemon's tracing subscriber receives). None, logged, when
    /// the object has no log map or no runtime is running.
    pub fn start(router_id: &str, ebpf: &mut Ebpf) -> Option<Forwarder> {
        let logger = match aya_log::EbpfLogger::init(ebpf) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("router {router_id}: no BPF log lines ({e})");
                return None;
            }
        };
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let _guard = rt.enter();
        // SAFETY: the logger owns the ring buffer's fd, which stays open and
        // the same for as long as the AsyncFd owns the logger.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .ok()?;
        Some(Forwarder(rt.spawn(async move {
            while let Ok(mut ready) = fd.readable_mut().await {
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
        })))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}
