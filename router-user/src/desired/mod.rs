//! What one router must be on a data plane: a pure function of the router,
//! the node config and the data plane, with no I/O. The plan compares it
//! with what the kernel has; the backends carry the difference out.

pub mod bpf;
pub mod iptables;
pub mod nft;
pub mod routes;
