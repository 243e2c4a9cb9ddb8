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
                "hardware.yaml doc 2: apiVersion: \"v1\" is not supported for Hardware (use \"tinkerbell.org/v1alpha1\")",
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
mod bmc_kinds {
    use super::*;
    use crate::resource::{bmc::Step, Spec};

    /// Tinkerbell's BMC example (its Rufio README), as its users have it.
    const TINKERBELL_EXAMPLE: &str = "apiVersion: v1
kind: Secret
metadata:
  name: bm-auth
  namespace: tink-system
type: kubernetes.io/basic-auth
data:
  username: YWRtaW4=
  password: UGFzc3cwcmQ=
---
apiVersion: bmc.tinkerbell.org/v1alpha1
kind: Machine
metadata:
  name: machine-sample-with-opts
  namespace: tink-system
spec:
  connection:
    host: 10.1.2.3
    port: 623
    authSecretRef:
      name: bm-auth
      namespace: tink-system
    insecureTLS: false
    providerOptions:
      preferredOrder: [gofish, ipmitool, asrockrack]
      ipmitool:
        port: 623
        cipherSuite: \"3\"
      redfish:
        port: 443
---
apiVersion: bmc.tinkerbell.org/v1alpha1
kind: Job
metadata:
  name: netboot-wf1
  namespace: tink-system
spec:
  machineRef:
    name: machine-sample-with-opts
    namespace: tink-system
  tasks:
    - powerAction: \"off\"
    - oneTimeBootDeviceAction:
        device: [pxe]
        efiBoot: true
    - powerAction: \"on\"
";

    #[test]
    fn tinkerbells_bmc_example_applies_unchanged() {
        let mut manifest = Manifest::default();
        manifest.parse("bmc.yaml", TINKERBELL_EXAMPLE);
        assert!(manifest.errors.is_empty(), "{:?}", manifest.errors);
        let warnings: Vec<String> = manifest.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            ["bmc.yaml doc 2: spec.connection.providerOptions.preferredOrder[2]: \"asrockrack\" is a provider Wisp does not implement; it is skipped (Wisp drives ipmitool and gofish, Redfish)"]
        );
        let Spec::Job(job) = &manifest.documents[2].1.spec else {
            panic!("a Job");
        };
        assert_eq!(job.tasks.len(), 3);
        assert!(matches!(
            job.tasks[1].step("t"),
            Ok(Step::BootDevice {
                efi_boot: true,
                persistent: false,
                ..
            })
        ));
    }

    #[test]
    fn bad_bmc_documents_name_the_field() {
        let mut manifest = Manifest::default();
        manifest.parse(
            "bad.yaml",
            "apiVersion: bmc.tinkerbell.org/v1alpha1\nkind: Task\nmetadata: {name: t}\nspec:\n  task: {powerAction: sideways}\n---\napiVersion: tinkerbell.org/v1alpha1\nkind: Machine\nmetadata: {name: m}\nspec: {}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: hunter2!}\n",
        );
        let errors: Vec<String> = manifest.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("bad.yaml doc 1: spec.task.powerAction: unknown variant `sideways`"),
            "{errors:?}"
        );
        assert_eq!(errors[1], "bad.yaml doc 2: apiVersion: \"tinkerbell.org/v1alpha1\" is not supported for Machine (use \"bmc.tinkerbell.org/v1alpha1\")");
        assert!(
            errors[2].starts_with("bad.yaml doc 3: data.password: must be base64"),
            "{errors:?}"
        );
        // The error names the field, never the value.
        assert!(!errors[2].contains("hunter2"), "{errors:?}");
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
