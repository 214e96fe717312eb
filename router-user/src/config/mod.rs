//! Inputs: Neutron's router list, the node config and the agent's
//! oslo.config files.
pub mod agent;
pub mod ini;
pub mod node;
pub mod routers;
