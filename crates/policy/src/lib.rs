//! The policy engine: resource types, parsing, validation, matching, merging, and the
//! effective limits each data-plane instance enforces. Pure functions; no I/O.

pub mod duration;
pub mod effective;
