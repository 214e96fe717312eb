//! What the daemon last applied, kept on disk so `show`, `cleanup` and a
//! restarted daemon know what xrouter owns.

use std::{collections::BTreeSet, io::Write as _, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{config::node::Dataplane, model::Router};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// The data plane in use.
    pub dataplane: Option<Dataplane>,
    /// The routers file the daemon follows.
    pub routers_file: Option<std::path::PathBuf>,
    /// Routers as last applied.
    pub routers: Vec<Router>,
    /// Bridges xrouter created (removed by `cleanup` once empty).
    pub bridges: BTreeSet<String>,
}

impl State {
    pub fn load(path: &Path) -> Result<State> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("state file {} is corrupt", crate::text::path(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
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
