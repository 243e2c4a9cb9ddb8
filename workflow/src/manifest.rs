//! Multi-document YAML manifests, as `wisp apply -f` takes them.
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resource::{decode, Decoded, FieldError};

/// Which document of which file: `hardware.yaml doc 1` (documents count from 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: String,
    pub doc: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} doc {}", self.file, self.doc)
    }
}

/// An error or warning about one field of one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub origin: Origin,
    #[serde(flatten)]
    pub field: FieldError,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.field)
    }
}

#[derive(Debug, Default)]
pub struct Manifest {
    pub documents: Vec<(Origin, Decoded)>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Manifest {
    /// Parses and validates every document of one file, collecting every error rather than
    /// stopping at the first, so that a user fixes a file in one pass.
    pub fn parse(&mut self, file: &str, text: &str) {
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let origin = Origin {
                file: file.to_string(),
                doc: index + 1,
            };
            let value = match Value::deserialize(document) {
                Ok(Value::Null) => continue, // an empty document, as between two `---`
                Ok(value) => value,
                Err(err) => {
                    self.errors.push(Problem {
                        origin,
                        field: FieldError {
                            path: "yaml".into(),
                            message: err.to_string(),
                        },
                    });
                    // The YAML stream cannot be resynchronised after a syntax error.
                    break;
                }
            };
            match decode(value) {
                Ok(mut decoded) => {
                    let warnings = std::mem::take(&mut decoded.warnings);
                    self.warnings
                        .extend(warnings.into_iter().map(|field| Problem {
                            origin: origin.clone(),
                            field,
                        }));
                    self.documents.push((origin, decoded));
                }
                Err(field) => self.errors.push(Problem { origin, field }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        let mut manifest = Manifest::default();
        manifest.parse("hardware.yaml", text);
        manifest.errors.iter().map(ToString::to_string).collect()
    }

    const HARDWARE_HEAD: &str =
        "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata:\n  name: nuc\n";

    #[test]
    fn bad_mac_names_file_doc_and_path() {
        let text = format!(
            "{HARDWARE_HEAD}spec:\n  interfaces:\n    - dhcp:\n        mac: 1c:69:7a:11:22\n"
        );
        assert_eq!(
            errors_of(&text),
            ["hardware.yaml doc 1: spec.interfaces[0].dhcp.mac: \"1c:69:7a:11:22\" is not a MAC address"]
        );
    }

    #[test]
    fn every_broken_document_is_reported() {
        let text = format!(
            "{HARDWARE_HEAD}spec: {{}}\n---\napiVersion: v1\nkind: Hardware\n---\n{HARDWARE_HEAD}spec:\n  interfaces:\n    - dhcp:\n        mac: 1c:69:7a:11:22:33\n        name_servers: [1.1.1.1, 8.8.8]\n"
        );
        assert_eq!(
            errors_of(&text),
            [
                "hardware.yaml doc 2: apiVersion: \"v1\" is not supported (use \"tinkerbell.org/v1alpha1\")",
                "hardware.yaml doc 3: spec.interfaces[0].dhcp.name_servers[1]: \"8.8.8\" is not an IPv4 address",
            ]
        );
    }

    #[test]
    fn missing_and_mistyped_fields() {
        let wf = "apiVersion: tinkerbell.org/v1alpha1\nkind: Workflow\nmetadata:\n  name: wf\nspec:\n  hardwareRef: hw\n";
        assert_eq!(
            errors_of(wf),
            ["hardware.yaml doc 1: spec.templateRef: is required"]
        );
        let lease = format!("{HARDWARE_HEAD}spec:\n  interfaces:\n    - dhcp:\n        mac: 1c:69:7a:11:22:33\n        lease_time: soon\n");
        let errors = errors_of(&lease);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("hardware.yaml doc 1: spec.interfaces[0].dhcp.lease_time: invalid type: string \"soon\""), "{errors:?}");
    }

    #[test]
    fn unknown_fields_are_kept_and_warned() {
        let text = format!("{HARDWARE_HEAD}  colour: blue\nspec:\n  interfaces:\n    - dhcp:\n        mac: 1c:69:7a:11:22:33\n        speed: 10G\n");
        let mut manifest = Manifest::default();
        manifest.parse("hw.yaml", &text);
        assert!(manifest.errors.is_empty());
        let warnings: Vec<String> = manifest.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "hw.yaml doc 1: metadata.colour: unknown field, kept but not used by Wisp",
                "hw.yaml doc 1: spec.interfaces[0].dhcp.speed: unknown field, kept but not used by Wisp",
            ]
        );
        let object = &manifest.documents[0].1.object;
        assert_eq!(object["spec"]["interfaces"][0]["dhcp"]["speed"], "10G");
    }

    #[test]
    fn yaml_syntax_error_has_a_location() {
        let errors = errors_of("kind: [unclosed\n");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("hardware.yaml doc 1: yaml: ") && errors[0].contains("line"),
            "{errors:?}"
        );
    }
}

#[cfg(test)]
mod server_owned_fields {
    use super::*;

    #[test]
    fn status_is_not_stored() {
        let text = "apiVersion: tinkerbell.org/v1alpha1\nkind: Workflow\nmetadata:\n  name: wf\nspec:\n  templateRef: t\n  hardwareRef: h\nstatus:\n  state: STATE_SUCCESS\n";
        let mut manifest = Manifest::default();
        manifest.parse("wf.yaml", text);
        assert!(
            manifest.errors.is_empty() && manifest.warnings.is_empty(),
            "{manifest:?}"
        );
        assert!(manifest.documents[0].1.object.get("status").is_none());
    }
}
