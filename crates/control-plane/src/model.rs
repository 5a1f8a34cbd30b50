//! How the control plane names and serializes the policy crate's resources: store keys, URL
//! collection names, canonical YAML.

use meshlimit_policy::{Kind, Problem, Resource};

use crate::store::Key;

pub use meshlimit_control_plane_client::paths::{collection, kind_of_collection};

/// Meshes are stored under the empty mesh: they are the namespaces, not inside one.
pub fn key(kind: Kind, mesh: &str, name: &str) -> Key {
    Key {
        mesh: if kind == Kind::Mesh {
            String::new()
        } else {
            mesh.to_string()
        },
        kind,
        name: name.to_string(),
    }
}

pub fn key_of(resource: &Resource) -> Key {
    key(resource.kind(), resource.mesh(), resource.name())
}

/// The resource's canonical YAML: what the store keeps and `get -o yaml` prints.
pub fn to_yaml(resource: &Resource) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(resource)
}

/// Any API body as YAML (what `Accept: application/yaml` gets).
pub fn any_to_yaml<T: serde::Serialize>(value: &T) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(value)
}

/// Parses exactly one resource (a stored value, or the body of a `PUT`).
pub fn parse_one(file: &str, text: &str) -> Result<Resource, Vec<Problem>> {
    let parsed = meshlimit_policy::parse_documents(file, text)?;
    let mut resources = parsed.resources;
    if resources.len() != 1 {
        return Err(vec![
            Problem::new(
                "",
                format!("expected exactly one resource, found {}", resources.len()),
            )
            .at(file, 1),
        ]);
    }
    Ok(resources.remove(0))
}

/// A problem that is not about one field of one document.
pub fn problem(file: &str, resource: &Resource, message: impl Into<String>) -> Problem {
    Problem::new("", message)
        .at(file, 0)
        .of(resource.kind().as_str(), resource.name())
}
