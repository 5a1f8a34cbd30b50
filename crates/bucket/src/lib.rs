//! Token-bucket engine (see issue: foundation). Filled in by its owner.
