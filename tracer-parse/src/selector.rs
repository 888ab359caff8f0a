//! What a request is about, validated: a pod by namespace/name or uid (optionally one
//! container), or a process by pid. Malformed input is an `InvalidArgument` naming the field.

use serde::Serialize;

/// The target of a selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A pod by namespace and name.
    Pod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// A pod by uid.
    PodUid(String),
    /// A process by pid.
    Pid(u32),
}

/// A validated selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Selector {
    /// What it names.
    pub target: Target,
    /// One container of the pod, by name.
    pub container: Option<String>,
}

/// Why a selector is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid selector: {0}")]
pub struct SelectorError(pub String);

/// Longest Kubernetes name accepted (DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;

fn check_name(field: &str, value: &str, allow_dots: bool) -> Result<(), SelectorError> {
    if value.is_empty() {
        return Err(SelectorError(format!("{field} is empty")));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(SelectorError(format!(
            "{field} is longer than {MAX_NAME_LEN} characters"
        )));
    }
    let valid_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (allow_dots && c == '.')
    };
    if !value.chars().all(valid_char) || value.starts_with('-') || value.ends_with('-') {
        return Err(SelectorError(format!(
            "{field} {value:?} is not a Kubernetes name (lowercase letters, digits, '-'{})",
            if allow_dots { ", '.'" } else { "" }
        )));
    }
    Ok(())
}

impl Selector {
    /// Validates a selector's parts.
    pub fn new(target: Target, container: Option<String>) -> Result<Self, SelectorError> {
        match &target {
            Target::Pod { namespace, name } => {
                check_name("namespace", namespace, false)?;
                check_name("pod name", name, true)?;
            }
            Target::PodUid(uid) => {
                let valid = uid.len() == 36
                    && uid.char_indices().all(|(i, c)| {
                        if matches!(i, 8 | 13 | 18 | 23) {
                            c == '-'
                        } else {
                            c.is_ascii_hexdigit()
                        }
                    });
                if !valid {
                    return Err(SelectorError(format!("pod uid {uid:?} is not a UUID")));
                }
            }
            Target::Pid(0) => return Err(SelectorError("pid 0 is not a process".into())),
            Target::Pid(_) => {
                if container.is_some() {
                    return Err(SelectorError(
                        "a container cannot narrow a pid selector".into(),
                    ));
                }
            }
        }
        if let Some(container) = &container {
            check_name("container", container, false)?;
        }
        let target = match target {
            Target::PodUid(uid) => Target::PodUid(uid.to_ascii_lowercase()),
            other => other,
        };
        Ok(Self { target, container })
    }

    /// Parses `NAMESPACE/POD` (the CLI's form).
    pub fn parse_pod(text: &str, container: Option<String>) -> Result<Self, SelectorError> {
        let Some((namespace, name)) = text.split_once('/') else {
            return Err(SelectorError(format!("{text:?} is not NAMESPACE/POD")));
        };
        Self::new(
            Target::Pod {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            container,
        )
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Pod { namespace, name } => write!(f, "pod {namespace}/{name}")?,
            Target::PodUid(uid) => write!(f, "pod uid {uid}")?,
            Target::Pid(pid) => write!(f, "pid {pid}")?,
        }
        if let Some(container) = &self.container {
            write!(f, " container {container}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_slash_pod_parses_and_odd_names_are_rejected_with_the_field() {
        let s = Selector::parse_pod("shop/api-7.v2", Some("app".into())).expect("valid");
        assert_eq!(
            s.target,
            Target::Pod {
                namespace: "shop".into(),
                name: "api-7.v2".into()
            }
        );
        assert!(
            Selector::parse_pod("shop", None)
                .expect_err("must be rejected")
                .0
                .contains("NAMESPACE/POD")
        );
        assert!(
            Selector::parse_pod("Shop/api", None)
                .expect_err("must be rejected")
                .0
                .contains("namespace")
        );
        assert!(
            Selector::parse_pod("shop/", None)
                .expect_err("must be rejected")
                .0
                .contains("pod name is empty")
        );
        assert!(
            Selector::parse_pod("shop/api", Some("a_b".into()))
                .expect_err("must be rejected")
                .0
                .contains("container")
        );
        let long = "a".repeat(300);
        assert!(
            Selector::parse_pod(&format!("shop/{long}"), None)
                .expect_err("must be rejected")
                .0
                .contains("longer")
        );
    }

    #[test]
    fn uids_must_be_uuids_and_pids_non_zero_without_a_container() {
        assert!(
            Selector::new(
                Target::PodUid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into()),
                None
            )
            .is_ok()
        );
        assert!(Selector::new(Target::PodUid("nope".into()), None).is_err());
        assert!(Selector::new(Target::Pid(0), None).is_err());
        assert!(Selector::new(Target::Pid(7), Some("app".into())).is_err());
    }
}
