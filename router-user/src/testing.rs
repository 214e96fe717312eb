//! What the crate's own tests share.

/// Fails the calling test unless it runs as root: tests that need the
/// kernel (namespaces, BPF, netfilter) must not pass unseen elsewhere.
pub(crate) fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (namespaces, BPF, netfilter): run the tests as root, \
         as `cargo xtask test` does"
    );
}
