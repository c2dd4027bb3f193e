//! tether: a sticky-session L4/L7 reverse proxy.
//!
//! Data flows: `config` turns `proxy.yaml` into a typed `Snapshot`; `runtime`
//! binds the listeners and owns the accept loops; each HTTP connection is served
//! by pingora's proxy with `l7::Router` deciding the backend through `affinity`
//! (key extraction, consistent hashing) and `store` (where each session lives);
//! each `protocol: tcp` connection is pinned the same way and copied by `l4`,
//! which also reads PROXY protocol headers for every listener; `tls`
//! terminates TLS for `https`/`tls` listeners and speaks it to backends;
//! `admin` serves the API and `metrics`.

pub mod admin;
pub mod affinity;
pub mod backend;
pub mod config;
pub mod h1;
pub mod health;
pub mod l4;
pub mod l7;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod resolve;
pub mod runtime;
pub mod sdnotify;
pub mod store;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod vip;
