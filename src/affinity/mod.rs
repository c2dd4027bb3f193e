//! Affinity: turning a request into a session key, and a key into a backend.

pub mod hash;
