//! Keeping the cache and Redis in agreement across outages: the bounded queue of
//! changes made while Redis was unreachable, their replay, and the revalidation
//! of the whole cache.
//!
//! Order of recovery: the reconnect loop (`tasks.rs`) reconnects (state Syncing:
//! new changes still queue, behind the old ones), [`replay`] sends the queue in
//! pipelined batches and switches to Up in the same critical section that finds
//! it empty; the subscriber (`events.rs`) then subscribes again and calls
//! [`Shared::request_revalidate`], which re-reads every cached key in pipelined
//! batches (messages were missed meanwhile). After an outage or a Redis restart,
//! revalidation writes records Redis lacks back with insert-if-absent and adopts
//! whatever Redis holds otherwise: an owner recorded meanwhile elsewhere wins.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::{ErrorKind, Value};

use super::cache::{Apply, PoolCache};
use super::link::{is_connection_error, Fail, State};
use super::ops::Op;
use super::scripts;
use super::Shared;

/// Keys per pipelined round trip in replays and revalidations.
const BATCH: usize = 256;

pub(super) struct Queue {
    ops: Mutex<VecDeque<Op>>,
    max: usize,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data behind.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    pub(super) fn new(max: usize) -> Queue {
        Queue {
            ops: Mutex::new(VecDeque::new()),
            max,
        }
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.ops).len()
    }
}

impl Shared {
    /// Queue a change applied locally while Redis could not take it.
    pub(super) fn enqueue(&self, op: Op) {
        let mut ops = lock(&self.queue.ops);
        let result = if ops.len() >= self.queue.max {
            "dropped"
        } else {
            ops.push_back(op);
            "queued"
        };
        drop(ops);
        self.link.record("queue", result, Instant::now());
        if self.link.is_up() {
            // Redis came back between the caller's check and now: send it along.
            self.kick.notify_one();
        }
    }

    /// A bound for background batches, which may carry many keys.
    pub(super) fn batch_limit(&self) -> Duration {
        super::link::batch_limit(&self.link.cfg)
    }

    /// Ask for a revalidation of the whole cache (`write_back`: also write the
    /// records Redis lacks). Runs in the background, one at a time.
    pub(super) fn request_revalidate(self: &Arc<Self>, write_back: bool) {
        if write_back {
            self.pending_write_back.store(true, SeqCst);
        }
        self.revalidate_again.store(true, SeqCst);
        if self.revalidating.swap(true, SeqCst) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            loop {
                while shared.revalidate_again.swap(false, SeqCst) {
                    let write_back = shared.pending_write_back.swap(false, SeqCst);
                    if !revalidate(&shared, write_back).await && write_back {
                        // Not done: the next one must write back again.
                        shared.pending_write_back.store(true, SeqCst);
                    }
                }
                shared.revalidating.store(false, SeqCst);
                // A request that came after the last check and saw us running.
                if !shared.revalidate_again.load(SeqCst) || shared.revalidating.swap(true, SeqCst) {
                    return;
                }
            }
        });
    }
}

impl Shared {
    /// Load every script: pipelines cannot fall back from EVALSHA to EVAL.
    async fn load_scripts(&self) -> Result<(), Fail> {
        (self.link)
            .call_within("load_scripts", self.batch_limit(), |c| async move {
                let mut pipe = redis::pipe();
                for s in scripts::all() {
                    // On a cluster, SCRIPT LOAD goes to every master.
                    pipe.cmd("SCRIPT").arg("LOAD").arg(s);
                }
                c.batch(pipe).await.map(drop)
            })
            .await
    }

    /// Send a pipeline (bounded by the batch limit); if Redis forgot the scripts
    /// (SCRIPT FLUSH, a restart not noticed yet), load them and send it again.
    pub(super) async fn pipeline(
        &self,
        op: &'static str,
        pipe: redis::Pipeline,
    ) -> Result<Vec<Value>, Fail> {
        for attempt in 0..2 {
            let pipe = pipe.clone();
            let sent = (self.link)
                .call_within(op, self.batch_limit(), |c| c.batch(pipe))
                .await;
            match sent {
                Err(Fail::Redis(e)) if attempt == 0 && e.kind() == NO_SCRIPT => {
                    self.load_scripts().await?;
                }
                other => return other,
            }
        }
        Err(Fail::Down)
    }
}

const NO_SCRIPT: ErrorKind = ErrorKind::Server(redis::ServerErrorKind::NoScript);

/// Load the scripts, then send the queue. Ends in state Up with an empty queue,
/// or Down if Redis failed again.
pub(super) async fn replay(shared: &Arc<Shared>) {
    if shared.load_scripts().await.is_err() {
        return;
    }
    loop {
        let batch: Vec<Op> = {
            let mut ops = lock(&shared.queue.ops);
            if ops.is_empty() {
                // Under the queue lock: nothing can be queued between the check and Up.
                shared.link.set_state(State::Up);
                return;
            }
            let n = wave(&ops, shared.link.is_cluster());
            ops.drain(..n).collect()
        };
        let sent = match &batch[..] {
            [drain @ Op::Drain { .. }] => shared.send_drain(drain).await.map(|()| Vec::new()),
            _ => {
                let mut pipe = redis::pipe();
                for op in &batch {
                    pipe.invoke_script(&shared.invocation(op));
                }
                shared.pipeline("replay", pipe).await
            }
        };
        match sent {
            Ok(replies) => {
                for (op, reply) in batch.iter().zip(&replies) {
                    shared.settle(op, reply);
                }
            }
            Err(Fail::Redis(e)) if !is_connection_error(&e) => {
                // Redis refuses these writes (not an outage): retrying would loop.
                tracing::error!(error = %e, ops = batch.len(), "redis store: queued writes rejected");
                shared.link.record("queue", "rejected", Instant::now());
            }
            Err(_) => {
                let mut ops = lock(&shared.queue.ops);
                for op in batch.into_iter().rev() {
                    ops.push_front(op);
                }
                shared.link.set_state(State::Down);
                return;
            }
        }
    }
}

/// How many queued ops (from the front) to send in one batch: at most
/// [`BATCH`]; a drain alone (its two commands go in order, `operator.rs`).
/// On a cluster a batch's commands run concurrently, so a batch also ends
/// before a key it already changes: changes of one key keep their order.
fn wave(ops: &VecDeque<Op>, cluster: bool) -> usize {
    let mut keys = std::collections::HashSet::new();
    for (i, op) in ops.iter().take(BATCH).enumerate() {
        let Some(key) = Shared::op_key(op) else {
            return i.max(1);
        };
        if cluster && !keys.insert(key) {
            return i;
        }
    }
    ops.len().min(BATCH)
}

/// Re-read every cached key; see the module header. Returns whether it completed.
async fn revalidate(shared: &Arc<Shared>, write_back: bool) -> bool {
    if !shared.link.is_up() {
        return false;
    }
    let Ok(restarted) = shared.check_restart().await else {
        return false;
    };
    let write_back = write_back || restarted;
    if write_back {
        shared.write_back_secret().await;
    }
    for cache in shared.pool_list() {
        let keys: Vec<Arc<str>> = cache.map.iter().map(|e| e.key().clone()).collect();
        for chunk in keys.chunks(BATCH) {
            if !revalidate_batch(shared, &cache, chunk, write_back).await {
                return false;
            }
        }
    }
    let _ = shared.load_drains().await;
    true
}

async fn revalidate_batch(
    shared: &Shared,
    cache: &PoolCache,
    keys: &[Arc<str>],
    write_back: bool,
) -> bool {
    let mut pipe = redis::pipe();
    let mut sent = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(entry) = cache.get(key) else {
            continue;
        };
        let record = entry.record();
        if write_back {
            let op = Op::Insert {
                pool: cache.name.clone(),
                key: (**key).into(),
                record: scripts::record_json(&entry.session()),
            };
            pipe.invoke_script(&shared.invocation(&op));
        } else if record.local {
            // Its queued change decides; nothing to compare yet.
            continue;
        } else {
            pipe.cmd("GET").arg(shared.keys.session(&cache.name, key));
        }
        sent.push((key, record.ver));
    }
    if sent.is_empty() {
        return true;
    }
    let Ok(replies) = shared.pipeline("revalidate", pipe).await else {
        return false;
    };
    let how = if write_back {
        Apply::Force
    } else {
        Apply::Newer
    };
    for ((key, seen), reply) in sent.into_iter().zip(&replies) {
        let body = match reply {
            Value::BulkString(b) => Some(b.as_slice()),
            other => scripts::outcome(other).and_then(|(_, body)| body),
        };
        match body.and_then(scripts::parse_stored) {
            Some(s) => {
                cache.apply(key, s.v, &s.session, how);
            }
            // Deleted (or expired) in Redis while we were not listening.
            None => {
                cache.remove_if(key, |e| {
                    let r = e.record();
                    !r.local && r.ver <= seen
                });
            }
        }
    }
    true
}

impl Shared {
    /// Whether Redis's `run_id` changed since last seen (it restarted). On a
    /// cluster, whether the masters' set of run ids did (one restarted, or a
    /// replica was promoted: either may lack the last writes).
    async fn check_restart(&self) -> Result<bool, Fail> {
        let info: Value = self
            .link
            .call("info", |mut c| async move {
                redis::cmd("INFO").arg("server").query_async(&mut c).await
            })
            .await?;
        let mut ids: Vec<String> = super::conn::info_texts(info)
            .iter()
            .filter_map(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("run_id:"))
                    .map(|id| id.trim().to_owned())
            })
            .collect();
        ids.sort();
        let run_id = (!ids.is_empty()).then(|| ids.join(","));
        let mut last = lock(&self.run_id);
        let restarted = matches!((&*last, &run_id), (Some(old), Some(new)) if old != new);
        if run_id.is_some() {
            *last = run_id;
        }
        Ok(restarted)
    }
}
