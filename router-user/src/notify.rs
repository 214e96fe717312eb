//! Tells systemd where the daemon is (`Type=notify` units): ready once the
//! routers are first applied, reloading around each reload, stopping, and a
//! one-line status. Only when started with `NOTIFY_SOCKET` (by systemd, or
//! by a test); otherwise every call does nothing.

use sd_notify::NotifyState as State;

/// The daemon has applied its routers (or, in agent mode, synced with
/// neutron-server) and serves its control socket.
pub fn ready(status: &str) {
    send(&[State::Ready, State::Status(&one_line(status))]);
}

/// A reload starts; [`ready`] ends it.
pub fn reloading() {
    // systemd matches a reload's end to its start by this timestamp.
    match State::monotonic_usec_now() {
        Ok(now) => send(&[State::Reloading, now]),
        Err(_) => send(&[State::Reloading]),
    }
}

/// The daemon is stopping (the routers keep forwarding).
pub fn stopping() {
    send(&[
        State::Stopping,
        State::Status("stopping; routers keep forwarding"),
    ]);
}

/// A one-line status for `systemctl status`.
pub fn status(status: &str) {
    send(&[State::Status(&one_line(status))]);
}

/// A status is one line of the message.
fn one_line(s: &str) -> String {
    s.lines().collect::<Vec<_>>().join("; ")
}

fn send(states: &[State]) {
    // The variable stays set: the holder of the metadata listeners is
    // started without it (see `metadata::handover`), and unsetting it
    // would race with threads reading the environment.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("telling systemd ({}): {e}", describe(states));
    }
}

fn describe(states: &[State]) -> String {
    states
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}
