//! Every `(op, result)` the Redis store reports in `store_operations_total`,
//! so each series is exported at 0 from the start (`metrics::start`).
//! `Link::record` checks in debug builds (every test) that nothing else is
//! reported: a new op or result must be added here.

use crate::metrics::StoreOps;

/// What `Link::call` reports: answered, no answer in time, an error answer,
/// or not sent (no connection).
const CALL: &[&str] = &["ok", "timeout", "error", "down"];

/// The store's own operations.
pub(super) const OPS: &StoreOps = &[
    ("connect", &["ok", "error"]),
    ("get", CALL),
    ("insert", CALL),
    ("cas", CALL),
    ("take_moved", CALL),
    ("delete", CALL),
    ("touch", CALL),
    ("replay", CALL),
    ("revalidate", CALL),
    ("bump", CALL),
    ("load_scripts", CALL),
    ("info", CALL),
    ("ping", CALL),
    ("drain", CALL),
    ("drains", CALL),
    // `local`: a cookie secret made here while Redis was away.
    ("secret", &["ok", "timeout", "error", "down", "local"]),
    // Writes queued during an outage, dropped on a full queue, or refused on replay.
    ("queue", &["queued", "dropped", "rejected"]),
];

/// What a lease command reports (`lease_link.rs`); `unacked`: no replica took the write.
const LEASE: &[&str] = &["ok", "timeout", "unacked", "down", "error"];

/// The virtual IP's lease operations, exported once the leases are in use.
pub(super) const LEASE_OPS: &StoreOps = &[
    ("lease_acquire", LEASE),
    ("lease_renew", LEASE),
    ("lease_release", LEASE),
    ("lease_request", LEASE),
    ("lease_get", LEASE),
    ("lease_ttl", LEASE),
];

/// Is `(op, result)` listed above?
pub(super) fn known(op: &str, result: &str) -> bool {
    OPS.iter()
        .chain(LEASE_OPS)
        .any(|(o, rs)| *o == op && rs.contains(&result))
}
