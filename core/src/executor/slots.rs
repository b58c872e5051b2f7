//! Slots: how many tries may run at once, globally (`parallelism`), per DAG across all its
//! runs (`max_active_tasks`) and per pool (named limits shared across DAGs, from
//! `SLUICE_POOLS=name=size,…`). A try needs a slot of each kind; it takes all or none, so
//! a task waiting for a pool never holds a DAG slot another task could use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::dag::Dag;

/// The slots of one process.
#[derive(Debug)]
pub struct Slots {
    global: Arc<Semaphore>,
    per_dag: Mutex<HashMap<String, Arc<Semaphore>>>,
    pools: HashMap<String, Arc<Semaphore>>,
    released: watch::Sender<u64>,
}

/// Held while a try runs; frees its slots and wakes waiting runs when dropped.
#[derive(Debug)]
pub struct SlotGuard {
    permits: Vec<OwnedSemaphorePermit>,
    released: watch::Sender<u64>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        // Release the permits before waking waiters, so a woken run finds them free.
        self.permits.clear();
        self.released.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Which kind of slot a task could not get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// The process-wide limit (`parallelism`): wait on [`Slots::global`].
    Global,
    /// The DAG's `max_active_tasks` or the task's pool: wait for any release.
    DagOrPool,
}

/// `SLUICE_POOLS` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SLUICE_POOLS: `{0}` is not `name=size` (e.g. `warehouse=4,api=2`)")]
pub struct BadPools(pub String);

/// Parses `name=size,name=size`.
pub fn parse_pools(text: &str) -> Result<HashMap<String, usize>, BadPools> {
    let mut pools = HashMap::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, size) = item
            .split_once('=')
            .ok_or_else(|| BadPools(item.to_string()))?;
        let size: usize = size
            .trim()
            .parse()
            .map_err(|_| BadPools(item.to_string()))?;
        pools.insert(name.trim().to_string(), size);
    }
    Ok(pools)
}

impl Slots {
    /// `parallelism` global slots and the given pools.
    pub fn new(parallelism: usize, pools: &HashMap<String, usize>) -> Self {
        let (released, _) = watch::channel(0);
        Self {
            global: Arc::new(Semaphore::new(parallelism)),
            per_dag: Mutex::new(HashMap::new()),
            pools: pools
                .iter()
                .map(|(name, size)| (name.clone(), Arc::new(Semaphore::new(*size))))
                .collect(),
            released,
        }
    }

    /// Whether a pool exists.
    pub fn has_pool(&self, name: &str) -> bool {
        self.pools.contains_key(name)
    }

    /// Wakes when any slot is released.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.released.subscribe()
    }

    /// The process-wide slots: a run short of one waits on this semaphore, which hands
    /// released slots to waiters one at a time, first come first served.
    pub fn global(&self) -> Arc<Semaphore> {
        self.global.clone()
    }

    /// Takes a slot of every kind the task needs, or none, and says which kind was short.
    /// A global slot already held (`spare`) is used first.
    pub fn try_acquire(
        &self,
        dag: &Dag,
        pool: Option<&str>,
        spare: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<SlotGuard, Short> {
        let dag_slots = {
            let mut per_dag = self.per_dag.lock().unwrap_or_else(|p| p.into_inner());
            per_dag
                .entry(dag.dag_id.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(dag.max_active_tasks as usize)))
                .clone()
        };
        let global = match spare.take() {
            Some(permit) => permit,
            None => self
                .global
                .clone()
                .try_acquire_owned()
                .map_err(|_| Short::Global)?,
        };
        let mut guard = SlotGuard {
            permits: vec![global],
            released: self.released.clone(),
        };
        // On a partial acquisition the guard drops what it took and wakes waiters, so a run
        // that failed on a slot held here for a moment does not sleep past its release.
        guard.permits.push(
            dag_slots
                .try_acquire_owned()
                .map_err(|_| Short::DagOrPool)?,
        );
        if let Some(pool) = pool {
            let pool = self.pools.get(pool).ok_or(Short::DagOrPool)?;
            guard.permits.push(
                pool.clone()
                    .try_acquire_owned()
                    .map_err(|_| Short::DagOrPool)?,
            );
        }
        Ok(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::parse_dag;

    #[test]
    fn a_try_takes_every_slot_it_needs_or_none() {
        let dag = parse_dag(
            std::path::Path::new("d.yaml"),
            "dag_id: d\nmax_active_tasks: 2\ntasks:\n  - {id: t, operator: noop}\n",
            &sluice_operators::basic(),
        )
        .unwrap();
        let slots = Slots::new(10, &parse_pools("db=1").unwrap());
        let none = &mut None;
        let first = slots.try_acquire(&dag, Some("db"), none).unwrap();
        assert_eq!(
            slots.try_acquire(&dag, Some("db"), none).unwrap_err(),
            Short::DagOrPool,
            "the pool is full"
        );
        let second = slots.try_acquire(&dag, None, none).unwrap();
        assert_eq!(
            slots.try_acquire(&dag, None, none).unwrap_err(),
            Short::DagOrPool,
            "max_active_tasks is 2"
        );
        drop(first);
        assert!(slots.try_acquire(&dag, Some("db"), none).is_ok());
        drop(second);
        let tight = Slots::new(1, &HashMap::new());
        let held = tight.try_acquire(&dag, None, none).unwrap();
        assert_eq!(
            tight.try_acquire(&dag, None, none).unwrap_err(),
            Short::Global
        );
        drop(held);
        assert!(parse_pools("a=1, b = 2").unwrap().len() == 2);
        assert!(parse_pools("a").is_err() && parse_pools("a=x").is_err());
    }
}
