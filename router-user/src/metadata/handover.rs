//! The metadata listeners outlive a daemon restart: a stopping daemon hands
//! its listening sockets to a small holder process (`xrouter
//! metadata-hold`, started from the daemon's own binary, in a session of
//! its own) and the next daemon takes them from it over a unix socket
//! (SCM_RIGHTS). Meanwhile the kernel keeps queueing VMs' connections on
//! the sockets, so none is refused; the new daemon accepts them. A holder
//! nobody takes over from exits after a while, closing the sockets.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    cmsg_space,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
        UnixAddr, accept, bind, connect, listen, recvmsg, sendmsg, socket,
    },
};
use serde::{Deserialize, Serialize};

/// How long a holder waits for the next daemon.
pub const HOLD_FOR: Duration = Duration::from_secs(60);
/// Sockets per message (the kernel takes at most 253 per SCM_RIGHTS).
const PER_MESSAGE: usize = 200;

/// A listening socket and the router it serves.
#[derive(Debug)]
pub struct Held {
    pub router: String,
    /// The inode of the router's namespace the socket was made in.
    pub netns: u64,
    pub fd: OwnedFd,
}

#[derive(Serialize, Deserialize)]
struct Batch {
    /// Router id and namespace inode of each socket of the message, in order.
    listeners: Vec<(String, u64)>,
}

/// The holder's socket in the state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("metadata-handover.sock")
}

/// Starts the holder with `held` (each fd inherited by it), returning once
/// it listens on its socket (so the next daemon cannot miss it).
pub fn spawn_holder(state_dir: &Path, held: &[Held]) -> Result<()> {
    let path = socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    // By its path, so that it shows as `xrouter` (pgrep, ps); through
    // /proc/self/exe when the binary was replaced since (an upgrade).
    let exe = std::env::current_exe()
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "/proc/self/exe".into());
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("metadata-hold").arg("--socket").arg(&path);
    let fds: Vec<RawFd> = held.iter().map(|h| h.fd.as_raw_fd()).collect();
    for h in held {
        cmd.arg("--listener")
            .arg(format!("{}:{}:{}", h.router, h.netns, h.fd.as_raw_fd()));
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Under systemd the holder is not the service's main process: it
        // never speaks for the service.
        .env_remove("NOTIFY_SOCKET");
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl,
    // setsid) on fds the parent keeps open.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Its own session: a signal to the daemon's group (a terminal's
            // Ctrl-C) does not reach it.
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .context("starting the metadata listener holder")?;
    let pid = child.id();
    // Reaped by nobody: it outlives this process by design.
    std::mem::forget(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!(
                "the metadata listener holder (pid {pid}) did not open {}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The holder's life: offers `held` on `socket` to the first process that
/// connects, then exits; exits anyway after `wait`.
pub fn hold(path: &Path, held: Vec<Held>, wait: Duration) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let l = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(l.as_raw_fd(), &UnixAddr::new(&tmp)?)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    listen(&l, Backlog::new(4)?)?;
    // Appears under its name only once root-only and listening.
    std::fs::rename(&tmp, path)?;
    let deadline = Instant::now() + wait;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Ok(());
        }
        let ms = left.as_millis().min(1000) as u16;
        let mut p = [PollFd::new(l.as_fd(), PollFlags::POLLIN)];
        if poll(&mut p, PollTimeout::from(ms))? == 0 {
            continue;
        }
        let c = unsafe { OwnedFd::from_raw_fd(accept(l.as_raw_fd())?) };
        break give(&c, &held);
    };
    // Gone before the sockets close: nobody takes over from a holder
    // that is leaving.
    let _ = std::fs::remove_file(path);
    result
}

/// Sends every socket over `c`, a batch a message, then waits for the
/// taker to close.
fn give(c: &OwnedFd, held: &[Held]) -> Result<()> {
    for chunk in held.chunks(PER_MESSAGE) {
        let batch = Batch {
            listeners: chunk.iter().map(|h| (h.router.clone(), h.netns)).collect(),
        };
        let text = serde_json::to_vec(&batch)?;
        let fds: Vec<RawFd> = chunk.iter().map(|h| h.fd.as_raw_fd()).collect();
        sendmsg::<UnixAddr>(
            c.as_raw_fd(),
            &[IoSlice::new(&text)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )?;
    }
    nix::sys::socket::shutdown(c.as_raw_fd(), nix::sys::socket::Shutdown::Write)?;
    // The taker closes once it holds them all; bounded.
    let mut p = [PollFd::new(c.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut p, PollTimeout::from(5000u16));
    Ok(())
}

/// Takes the sockets a holder keeps in `state_dir`, if one is there.
pub fn take_over(state_dir: &Path) -> Result<Vec<Held>> {
    let path = socket_path(state_dir);
    if !path.exists() {
        return Ok(vec![]);
    }
    let c = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Err(e) = connect(c.as_raw_fd(), &UnixAddr::new(&path)?) {
        // A holder that died: its socket file is stale.
        tracing::debug!("{}: {e}", path.display());
        let _ = std::fs::remove_file(&path);
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut p = [PollFd::new(c.as_fd(), PollFlags::POLLIN)];
        if poll(&mut p, PollTimeout::from(5000u16))? == 0 {
            bail!("the metadata listener holder stopped answering");
        }
        let mut space = cmsg_space!([RawFd; PER_MESSAGE]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(
            c.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(r) = cmsg {
                // SAFETY: fresh fds the kernel just installed for us.
                fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let n = msg.bytes;
        if n == 0 && fds.is_empty() {
            break;
        }
        let batch: Batch = serde_json::from_slice(&buf[..n]).context("holder's message")?;
        if batch.listeners.len() != fds.len() {
            bail!(
                "the holder sent {} sockets for {} listeners",
                fds.len(),
                batch.listeners.len()
            );
        }
        for ((router, netns), fd) in batch.listeners.into_iter().zip(fds) {
            out.push(Held { router, netns, fd });
        }
    }
    Ok(out)
}

/// `--listener ROUTER:INODE:FD` as the holder is given it.
pub fn parse_listener(s: &str) -> Result<Held> {
    let mut it = s.rsplitn(3, ':');
    let (Some(fd), Some(ino), Some(router)) = (it.next(), it.next(), it.next()) else {
        bail!("{s:?} is not ROUTER:INODE:FD");
    };
    let fd: RawFd = fd.parse().with_context(|| format!("fd in {s:?}"))?;
    // SAFETY: the daemon passed this fd open, for us alone to own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Held {
        router: router.to_string(),
        netns: ino.parse().with_context(|| format!("inode in {s:?}"))?,
        fd,
    })
}
