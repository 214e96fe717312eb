//! What the daemon last applied, kept on disk so `show`, `cleanup` and a
//! restarted daemon know what xrouter owns.

use std::{collections::BTreeSet, io::Write as _, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{config::node::Dataplane, desired::NatAddresses, model::Router};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// The data plane in use.
    pub dataplane: Option<Dataplane>,
    /// The routers file the daemon follows.
    pub routers_file: Option<std::path::PathBuf>,
    /// Routers as last applied successfully (a router whose apply failed
    /// keeps its entry from before; a new one has none until it succeeds).
    pub routers: Vec<Router>,
    /// Routers whose last apply failed: what was attempted may be partly in
    /// place, so the next apply retries it, a release flushes what it may
    /// have published, and removal and `cleanup` cover it too.
    #[serde(default)]
    pub failed: Vec<Failed>,
    /// Bridges xrouter created (removed by `cleanup` once empty).
    pub bridges: BTreeSet<String>,
}

/// A router whose last apply failed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failed {
    /// The router as last attempted.
    pub router: Router,
    /// Why it failed.
    pub error: String,
    /// Every floating IP and gateway address that the applied state and
    /// the failed attempts since may have put in place.
    pub live: NatAddresses,
}

impl State {
    /// IDs of every router xrouter may have built something of: applied,
    /// or attempted and failed.
    pub fn router_ids(&self) -> std::collections::BTreeSet<String> {
        self.routers
            .iter()
            .map(|r| r.id.clone())
            .chain(self.failed.iter().map(|f| f.router.id.clone()))
            .collect()
    }

    /// The router `id` as last applied successfully.
    pub fn applied(&self, id: &str) -> Option<&Router> {
        self.routers.iter().find(|r| r.id == id)
    }

    /// The failed attempt of router `id`, if its last apply failed.
    pub fn failure(&self, id: &str) -> Option<&Failed> {
        self.failed.iter().find(|f| f.router.id == id)
    }

    pub fn load(path: &Path) -> Result<State> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("state file {} is corrupt", crate::text::path(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(e).with_context(|| {
                    format!(
                        "reading {} (the daemon's state is root's: run this as root)",
                        crate::text::path(path)
                    )
                })
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", crate::text::path(path))),
        }
    }

    /// Writes the state atomically (rename over the old file).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().context("state file has no directory")?;
        ensure_private_dir(dir)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("writing {}", crate::text::path(&tmp)))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("writing {}", crate::text::path(path)))?;
        Ok(())
    }
}

/// Creates `dir` readable by root only (it holds the control socket).
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", crate::text::path(dir)))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting permissions of {}", crate::text::path(dir)))?;
    Ok(())
}
