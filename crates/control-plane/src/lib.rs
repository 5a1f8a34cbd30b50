//! meshlimit-control-plane: filled in by its owner.
