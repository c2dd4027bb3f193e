//! Configuration: `proxy.yaml` text -> raw serde structs -> validated [`Snapshot`].

mod model;
pub use model::*;
