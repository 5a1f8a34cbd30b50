//! meshlimit-xds: filled in by its owner.
