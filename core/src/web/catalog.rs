//! The DAGs the web server shows, re-read from the folder when its files change (checked at
//! most every two seconds, so a busy page does not re-parse on every request).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_operator_api::Registry;

use crate::dag::folder::Fingerprint;
use crate::dag::DagBag;

const RECHECK: Duration = Duration::from_secs(2);

struct Cached {
    bag: Arc<DagBag>,
    fingerprint: Fingerprint,
    checked: Instant,
}

/// A cached [`DagBag`] of one folder.
pub struct DagCatalog {
    folder: PathBuf,
    registry: Registry,
    cached: Mutex<Option<Cached>>,
}

impl DagCatalog {
    /// A catalog of `folder`.
    pub fn new(folder: PathBuf, registry: Registry) -> Self {
        Self {
            folder,
            registry,
            cached: Mutex::new(None),
        }
    }

    /// The operators DAGs are parsed with.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The current DAGs.
    pub fn get(&self) -> Arc<DagBag> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_mut() {
            if c.checked.elapsed() < RECHECK {
                return c.bag.clone();
            }
            let fingerprint = DagBag::fingerprint(&self.folder);
            c.checked = Instant::now();
            if fingerprint == c.fingerprint {
                return c.bag.clone();
            }
        }
        let fingerprint = DagBag::fingerprint(&self.folder);
        let bag = Arc::new(DagBag::load(&self.folder, &self.registry));
        *cached = Some(Cached {
            bag: bag.clone(),
            fingerprint,
            checked: Instant::now(),
        });
        bag
    }
}
