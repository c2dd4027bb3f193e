//! Consistent hashing of session keys over a pool's eligible backends.
