//! `Mesh`: a namespace for the other resources. `default` exists without being declared.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

pub const DEFAULT_MESH: &str = "default";
