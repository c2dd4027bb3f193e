//! Affinity: turning a request into a session key (`key`, `cookie`) and a key
//! into a backend (`hash`).

pub mod cookie;
pub mod hash;
pub mod key;
