//! The names of the kubelet's log directories: `/var/log/pods/<namespace>_<name>_<uid>` and
//! `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`, which name pods and containers
//! without the API server. Reading the directories is the daemon's (`discover::pods`).

use crate::cgroup::{normalize_container_id, normalize_pod_uid};

/// A pod as the kubelet's log directories name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID, lowercase: a dashed UUID, or 32 hex digits for a static pod.
    pub uid: String,
    /// Names of the containers that have a log directory (including exited ones), sorted.
    pub containers: Vec<String>,
}

/// A container as its /var/log/containers symlink names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLogName {
    /// The pod's name.
    pub pod_name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The container's name in the pod spec.
    pub container: String,
    /// The runtime's container id, 64 lowercase hex digits.
    pub container_id: String,
}

/// Why a kubelet log name is not a pod's or a container's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogNameError {
    /// Not exactly three `_`-separated parts (Kubernetes names never hold `_`).
    #[error("the name does not split into exactly three '_'-separated parts")]
    NotThreeParts,
    /// The namespace is not a DNS-1123 label.
    #[error("the namespace is not a DNS-1123 label")]
    Namespace,
    /// The pod name is not a DNS-1123 subdomain.
    #[error("the pod name is not a DNS-1123 subdomain")]
    PodName,
    /// The container name is not a DNS-1123 label.
    #[error("the container name is not a DNS-1123 label")]
    ContainerName,
    /// The pod uid is neither a UUID nor a static pod's hash.
    #[error("the uid is neither a UUID nor a static pod's 32-hex hash")]
    PodUid,
    /// A container log name lacks its `.log` suffix.
    #[error("the name does not end in .log")]
    NoLogSuffix,
    /// A container log name does not end in `-<64 hex digits>`.
    #[error("the name does not end in a '-' and a 64-hex-digit container id")]
    ContainerId,
}

/// Parses a pod log directory's name, `<namespace>_<name>_<uid>`, into a pod identity without
/// containers, or says why it is not one.
pub fn parse_pod_dir_name(name: &str) -> Result<PodIdentity, LogNameError> {
    let [namespace, pod_name, uid] = split_three(name)?;
    if !is_dns_name(namespace, false) {
        return Err(LogNameError::Namespace);
    }
    if !is_dns_name(pod_name, true) {
        return Err(LogNameError::PodName);
    }
    let uid = normalize_pod_uid(uid).ok_or(LogNameError::PodUid)?;
    Ok(PodIdentity {
        namespace: namespace.to_owned(),
        name: pod_name.to_owned(),
        uid,
        containers: Vec::new(),
    })
}

/// Parses a container log symlink's name, `<pod>_<namespace>_<container>-<64 hex id>.log`,
/// into its parts, or says why it is not one.
pub fn parse_container_log_name(name: &str) -> Result<ContainerLogName, LogNameError> {
    let stem = name.strip_suffix(".log").ok_or(LogNameError::NoLogSuffix)?;
    // Names may hold '-', ids never do: the id follows the last one.
    let (rest, id) = stem.rsplit_once('-').ok_or(LogNameError::ContainerId)?;
    let container_id = normalize_container_id(id).ok_or(LogNameError::ContainerId)?;
    let [pod_name, namespace, container] = split_three(rest)?;
    if !is_dns_name(pod_name, true) {
        return Err(LogNameError::PodName);
    }
    if !is_dns_name(namespace, false) {
        return Err(LogNameError::Namespace);
    }
    if !is_dns_name(container, false) {
        return Err(LogNameError::ContainerName);
    }
    Ok(ContainerLogName {
        pod_name: pod_name.to_owned(),
        namespace: namespace.to_owned(),
        container: container.to_owned(),
        container_id,
    })
}

/// Whether a directory inside a pod log directory is named like a container (a DNS-1123
/// label).
pub fn is_container_name(name: &str) -> bool {
    is_dns_name(name, false)
}

/// Exactly three `_`-separated parts: Kubernetes names never hold `_`, so this is unambiguous.
fn split_three(name: &str) -> Result<[&str; 3], LogNameError> {
    let mut parts = name.split('_');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(first), Some(second), Some(third), None) => Ok([first, second, third]),
        _ => Err(LogNameError::NotThreeParts),
    }
}

/// Lowercase alphanumerics and `-` (a DNS-1123 label), and `.` too for a subdomain (pod names).
fn is_dns_name(name: &str, allow_dots: bool) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|byte| {
            byte.is_ascii_lowercase()
                || byte.is_ascii_digit()
                || byte == b'-'
                || (allow_dots && byte == b'.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB_UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const NGINX_ID: &str = "4c8e5b2a9f0d1e3c6b7a8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";
    const COREDNS_ID: &str = "d3b07384d113edec49eaa6238ad5ff00c86e7f0e1c2b3a4958677a6b5c4d3e2f";

    /// The rows of fixtures/pod_dir_names.txt: name, and `Ok(identity)` or `Err(a word of the
    /// reason)`.
    fn pod_dir_name_table() -> Vec<(&'static str, Result<PodIdentity, &'static str>)> {
        let table = include_str!("fixtures/pod_dir_names.txt");
        let mut rows = Vec::new();
        for line in table
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let expected = match fields[..] {
                [_, "ok", namespace, name, uid] => Ok(PodIdentity {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    uid: uid.to_owned(),
                    containers: Vec::new(),
                }),
                [_, "skip", word] => Err(word),
                _ => panic!("pod_dir_names.txt: bad row {line:?}"),
            };
            rows.push((fields[0], expected));
        }
        assert!(rows.len() > 20, "pod_dir_names.txt has {} rows", rows.len());
        rows
    }

    #[test]
    fn pod_dir_names_parse_or_are_rejected_with_a_reason() {
        for (name, expected) in pod_dir_name_table() {
            match (parse_pod_dir_name(name), expected) {
                (Ok(actual), Ok(expected)) => assert_eq!(actual, expected, "{name:?}"),
                (Err(reason), Err(word)) => {
                    let reason = reason.to_string();
                    assert!(reason.contains(word), "{name:?}: {reason:?} lacks {word:?}");
                }
                (actual, expected) => panic!("{name:?}: got {actual:?}, expected {expected:?}"),
            }
        }
        let long_pod = "p".repeat(254);
        for (name, word) in [
            (format!("default_{long_pod}_{WEB_UID}"), "subdomain"),
            (format!("{}_web-0_{WEB_UID}", "n".repeat(254)), "label"),
            ("_".repeat(10_000), "three"),
            (format!("default_web-0_{}", "0".repeat(10_000)), "uid"),
        ] {
            let reason = parse_pod_dir_name(&name)
                .expect_err("too long to be a pod's")
                .to_string();
            assert!(reason.contains(word), "{}...: {reason:?}", &name[..20]);
        }
    }

    #[test]
    fn container_log_names_give_pod_namespace_container_and_lowercase_id() {
        let name = format!(
            "prometheus-k8s.example.com-0_monitoring_config-reloader-{}.log",
            NGINX_ID.to_ascii_uppercase()
        );
        let expected = ContainerLogName {
            pod_name: "prometheus-k8s.example.com-0".to_owned(),
            namespace: "monitoring".to_owned(),
            container: "config-reloader".to_owned(),
            container_id: NGINX_ID.to_owned(),
        };
        assert_eq!(parse_container_log_name(&name), Ok(expected));
    }

    #[test]
    fn odd_container_log_names_say_what_is_wrong() {
        // The kubelet cuts names at 255 bytes, .log included: a long pod name loses the id.
        let truncated = format!("{}_default_nginx-{COREDNS_ID}", "a".repeat(200));
        for (name, reason) in [
            (
                "web-0_default_nginx.log".to_owned(),
                LogNameError::ContainerId,
            ),
            (
                format!("web-0_default_nginx-{NGINX_ID}.txt"),
                LogNameError::NoLogSuffix,
            ),
            (
                format!("web-0_default_nginx-{}.log", &COREDNS_ID[..63]),
                LogNameError::ContainerId,
            ),
            (
                format!("default_nginx-{COREDNS_ID}.log"),
                LogNameError::NotThreeParts,
            ),
            (
                format!("a_b_c_nginx-{COREDNS_ID}.log"),
                LogNameError::NotThreeParts,
            ),
            (
                format!("Web_default_nginx-{COREDNS_ID}.log"),
                LogNameError::PodName,
            ),
            (
                format!("web_Default_nginx-{COREDNS_ID}.log"),
                LogNameError::Namespace,
            ),
            (
                format!("web_default_my.app-{COREDNS_ID}.log"),
                LogNameError::ContainerName,
            ),
            ("README.md".to_owned(), LogNameError::NoLogSuffix),
            (
                format!("{}.log", &truncated[..251]),
                LogNameError::ContainerId,
            ),
        ] {
            assert_eq!(parse_container_log_name(&name), Err(reason), "{name:?}");
        }
    }

    #[test]
    fn container_directory_names_are_dns_labels() {
        assert!(is_container_name("istio-proxy"));
        for odd in ["", "Not_A_Container", "my.app", "a".repeat(254).as_str()] {
            assert!(!is_container_name(odd), "{odd:?}");
        }
    }
}
