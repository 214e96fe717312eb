//! Inputs: Neutron's router list and the node config.
pub mod node;
pub mod routers;
