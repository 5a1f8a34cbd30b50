//! What is wrong with a document (or, as a warning, what deserves attention).

use std::fmt;

/// One problem (or warning) in one document of one file.
///
/// Displayed as `<file>: document <n> (<Kind> <name>): <field path>: <message>`; the parts
/// that are unknown (no file, no kind yet, no field) are left out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Problem {
    pub file: String,
    /// 1-based position of the document in its file; 0 when not tied to a document.
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Dotted field path (`spec.rules[0].default.local.http`); empty for the whole document.
    pub path: String,
    pub message: String,
}

impl Problem {
    /// A problem tied to no file or document yet (a check across resources).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            file: String::new(),
            document: 0,
            kind: None,
            name: None,
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same problem, attributed to a document of a file.
    pub fn at(mut self, file: &str, document: usize) -> Problem {
        self.file = file.to_string();
        self.document = document;
        self
    }

    /// The same problem, attributed to a resource.
    pub fn of(mut self, kind: impl Into<String>, name: impl Into<String>) -> Problem {
        self.kind = Some(kind.into());
        let name = name.into();
        self.name = (!name.is_empty()).then_some(name);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        if !self.file.is_empty() {
            write!(f, "{}", self.file)?;
            wrote = true;
        }
        if self.document > 0 {
            write!(
                f,
                "{}document {}",
                if wrote { ": " } else { "" },
                self.document
            )?;
            wrote = true;
        }
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => {
                write!(f, "{}({kind} {name})", if wrote { " " } else { "" })?;
                wrote = true;
            }
            (Some(kind), None) => {
                write!(f, "{}({kind})", if wrote { " " } else { "" })?;
                wrote = true;
            }
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}{}", if wrote { ": " } else { "" }, self.path)?;
            wrote = true;
        }
        write!(f, "{}{}", if wrote { ": " } else { "" }, self.message)
    }
}

impl std::error::Error for Problem {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_every_known_part() {
        let p = Problem::new("spec.rules[0].default.local", "must be defined")
            .of("MeshRateLimit", "backend")
            .at("policies.yaml", 2);
        assert_eq!(
            p.to_string(),
            "policies.yaml: document 2 (MeshRateLimit backend): spec.rules[0].default.local: must be defined"
        );
    }

    #[test]
    fn leaves_out_unknown_parts() {
        let p = Problem::new("", "expected a mapping, found a string").at("a.yaml", 1);
        assert_eq!(
            p.to_string(),
            "a.yaml: document 1: expected a mapping, found a string"
        );
        let p = Problem::new("name", "must be defined").of("Mesh", "");
        assert_eq!(p.to_string(), "(Mesh): name: must be defined");
    }
}
