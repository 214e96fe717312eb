//! Where routers come from. A source yields validated routers
//! (`model::Router`) and knows nothing of the kernel: today the routers
//! file (Neutron's `sync_routers` payload as JSON), watched on disk.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::{
    config::{node::NodeConfig, routers},
    model::Router,
};

/// Reads and validates a routers file for this node.
pub fn read_routers(path: &Path, node: &NodeConfig) -> Result<Vec<Router>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading routers file {}", crate::text::path(path)))?;
    routers::parse_for(&text, node).map_err(|e| anyhow::anyhow!("{}: {e}", crate::text::path(path)))
}

/// What identifies a version of a file on disk (None: unreadable): a change
/// of it is a reload.
pub fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.modified().ok()?,
        m.len(),
        std::os::unix::fs::MetadataExt::ino(&m),
    ))
}
