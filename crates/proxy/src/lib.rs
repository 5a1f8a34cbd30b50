//! meshlimit-proxy: filled in by its owner.
