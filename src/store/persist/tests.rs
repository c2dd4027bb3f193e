//! Tests of persistence.
