//! Which pod and container a process belongs to, read from its cgroup paths alone.
//!
//! Understands the kubelet's layouts for both cgroup drivers (systemd, cgroupfs), the
//! containerd, CRI-O and Docker runtimes, and /proc/PID/cgroup on cgroup v1, v2 and hybrid hosts.

use std::num::ParseIntError;

use crate::cgroup_namespace::{NamespaceRoots, resolve_cgroup_path};

/// Why the content of /proc/PID/cgroup could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A line lacks the two colons of `hierarchy-id:controllers:path`.
    #[error(
        "/proc/PID/cgroup line {line_number}: expected hierarchy-id:controllers:path, got {line:?}"
    )]
    MissingSeparator {
        /// 1-based line number.
        line_number: usize,
        /// The line as read.
        line: String,
    },
    /// The hierarchy id before the first colon is not a number.
    #[error("/proc/PID/cgroup line {line_number}: hierarchy id {hierarchy_id:?} is not a number")]
    InvalidHierarchyId {
        /// 1-based line number.
        line_number: usize,
        /// The text found where the hierarchy id belongs.
        hierarchy_id: String,
        /// Why it did not parse.
        #[source]
        source: ParseIntError,
    },
    /// The path after the second colon is not absolute (the kernel always writes a leading `/`).
    #[error("/proc/PID/cgroup line {line_number}: cgroup path {path:?} does not start with '/'")]
    RelativePath {
        /// 1-based line number.
        line_number: usize,
        /// The path as read.
        path: String,
    },
}

/// Kubernetes QoS class as the kubelet encodes it in the cgroup layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    /// Every container has equal requests and limits: the pod cgroup sits right under kubepods.
    Guaranteed,
    /// Some requests or limits, not all equal: under `kubepods/burstable`.
    Burstable,
    /// No requests or limits at all: under `kubepods/besteffort`.
    BestEffort,
}

impl QosClass {
    /// Lowercase name as the kubelet spells it in cgroup names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

/// Container runtime, from the container cgroup's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `cri-containerd-<id>.scope` (systemd driver) or `...slice:cri-containerd:<id>`.
    Containerd,
    /// `crio-<id>.scope` (systemd driver) or `crio-<id>` (cgroupfs driver).
    Crio,
    /// `docker-<id>.scope` (systemd driver) or `docker-<id>` (cgroupfs driver).
    Docker,
    /// A bare id (cgroupfs driver: containerd and dockershim both name it so), or no container.
    Unknown,
}

impl Runtime {
    /// Lowercase name for labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::Crio => "crio",
            Self::Docker => "docker",
            Self::Unknown => "unknown",
        }
    }
}

/// What a cgroup path says about the pod and container it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// The kubelet's pod UID, lowercase: a dashed UUID, or for static pods (whose UID is the
    /// kubelet's hash of the manifest) 32 hex digits; the same text as in /var/log/pods names.
    pub pod_uid: String,
    /// QoS class, from the pod cgroup's parent.
    pub qos: QosClass,
    /// Container id, 64 lowercase hex digits; `None` for the pod-level cgroup itself.
    pub container_id: Option<String>,
    /// Runtime named by the container cgroup; `Unknown` when it gives none or there is no container.
    pub runtime: Runtime,
}

/// Parses one cgroup path (as in /proc/PID/cgroup, e.g.
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`).
///
/// The pod component may sit below other components (kind and minikube nodes, nested
/// runtimes), and cgroups below the container's (e.g. CRI-O's `.../crio-<id>.scope/container`)
/// still belong to that container. When pods nest, the outermost pod wins: it is the one the
/// node's kubelet knows. Returns `None` for anything that is not a pod or a pod's container,
/// including CRI-O's `crio-conmon-<id>.scope`: that is the container's monitor process, and it
/// must never be attributed to the container it watches.
pub fn parse_cgroup_path(path: &str) -> Option<PodCgroup> {
    let components: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    for (index, component) in components.iter().enumerate() {
        let ((pod_uid, qos), container) = match split_colon_form(component) {
            // runc's systemd form `<pod slice>:<prefix>:<id>`, left literal when the runtime's
            // cgroup driver is cgroupfs but the kubelet's is systemd (seen on some k3s nodes).
            Some((slice, prefix, id)) => {
                let Some(pod) = parse_systemd_pod_slice(slice) else {
                    continue;
                };
                (
                    pod,
                    Some(parse_container_component(&format!("{prefix}-{id}"))?),
                )
            }
            None => {
                let pod = parse_systemd_pod_slice(component)
                    .or_else(|| parse_cgroupfs_pod_dir(component, &components[..index]));
                let Some(pod) = pod else {
                    continue;
                };
                let container = match components.get(index + 1) {
                    Some(below) => Some(parse_container_component(below)?),
                    None => None,
                };
                (pod, container)
            }
        };
        let (runtime, container_id) = match container {
            Some((runtime, container_id)) => (runtime, Some(container_id)),
            None => (Runtime::Unknown, None),
        };
        return Some(PodCgroup {
            pod_uid,
            qos,
            container_id,
            runtime,
        });
    }
    None
}

/// One line of /proc/PID/cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLine {
    /// Hierarchy id: 0 for the unified (v2) hierarchy, 1 and up for v1 hierarchies.
    pub hierarchy_id: u32,
    /// Controllers bound to the hierarchy (`memory`, `cpu`, `name=systemd`); empty for v2.
    pub controllers: Vec<String>,
    /// The cgroup's path, relative to the reader's cgroup namespace root (so it starts with
    /// `/..` when the process sits outside the reader's namespace).
    pub path: String,
    /// The kernel marked the path ` (deleted)` (v2 only): the cgroup was removed while the
    /// process, typically a zombie, still pointed at it. `path` is given without the mark.
    pub deleted: bool,
}

/// Parses the content of /proc/PID/cgroup; blank lines are skipped.
///
/// Only the first two colons separate fields: the path itself may hold colons (runc's
/// `slice:prefix:id` form).
pub fn parse_proc_cgroup(content: &str) -> Result<Vec<CgroupLine>, CgroupError> {
    let mut lines = Vec::new();
    for (index, line) in content.lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(CgroupError::MissingSeparator {
                line_number,
                line: line.to_owned(),
            });
        };
        let hierarchy_id =
            hierarchy_id
                .parse::<u32>()
                .map_err(|source| CgroupError::InvalidHierarchyId {
                    line_number,
                    hierarchy_id: hierarchy_id.to_owned(),
                    source,
                })?;
        if !path.starts_with('/') {
            return Err(CgroupError::RelativePath {
                line_number,
                path: path.to_owned(),
            });
        }
        let (path, deleted) = match path.strip_suffix(" (deleted)") {
            Some(path) => (path, true),
            None => (path, false),
        };
        let controllers = controllers
            .split(',')
            .filter(|controller| !controller.is_empty())
            .map(str::to_owned)
            .collect();
        lines.push(CgroupLine {
            hierarchy_id,
            controllers,
            path: path.to_owned(),
            deleted,
        });
    }
    Ok(lines)
}

/// The cgroup paths of a process that matter to the tracer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessCgroups {
    /// Path in the unified (v2) hierarchy, below its mount's root: the `0::` line's, if the
    /// kernel printed one and it resolves (see [`process_cgroups`]).
    pub unified: Option<String>,
    /// Path in the v1 hierarchy whose controllers include `memory`, below its mount's root.
    pub memory_v1: Option<String>,
    /// The pod, from the first line that parses as one: unified first, then memory, then
    /// `name=systemd`, then any other line in file order. On hybrid hosts the unified path is
    /// often the runtime's service while the v1 paths name the pod, hence the fallbacks.
    pub pod: Option<PodCgroup>,
}

/// Reads the paths that matter out of /proc/PID/cgroup content. Empty content gives all `None`.
///
/// The file's paths are relative to the reader's cgroup namespace root; the unified and memory
/// paths are resolved against that root's place in each hierarchy (`roots`, see
/// [`crate::cgroup_namespace`]) into paths below the mounts' roots, and are `None` where that
/// place is not known or the path climbs above the mount. The pod is read from the resolved
/// paths first: a cgroupfs-driver pod beside the reader's own (`/../../pod<uid>/<id>`) names
/// its QoS and `kubepods` ancestors only once resolved.
pub fn process_cgroups(
    content: &str,
    roots: &NamespaceRoots<'_>,
) -> Result<ProcessCgroups, CgroupError> {
    let lines = parse_proc_cgroup(content)?;
    let unified_line = lines.iter().find(|line| line.hierarchy_id == 0);
    let memory_line = lines.iter().find(|line| is_v1_with(line, "memory"));
    let systemd_line = lines.iter().find(|line| is_v1_with(line, "name=systemd"));
    let resolve =
        |root: Option<&str>, line: Option<&CgroupLine>| resolve_cgroup_path(root?, &line?.path);
    let unified = resolve(roots.unified, unified_line);
    let memory_v1 = resolve(roots.memory_v1, memory_line);
    let pod = (unified.iter().chain(memory_v1.iter()).map(String::as_str))
        .chain(
            (unified_line.into_iter())
                .chain(memory_line)
                .chain(systemd_line)
                .chain(lines.iter())
                .map(|line| line.path.as_str()),
        )
        .find_map(parse_cgroup_path);
    Ok(ProcessCgroups {
        unified,
        memory_v1,
        pod,
    })
}

fn is_v1_with(line: &CgroupLine, controller: &str) -> bool {
    line.hierarchy_id != 0 && line.controllers.iter().any(|bound| bound == controller)
}

/// Normalizes a pod UID as the kubelet writes it in names: `_` (systemd escaping) back to
/// `-`, lowercase, and accepted only if it is a dashed UUID or 32 hex digits (a static pod's).
pub(crate) fn normalize_pod_uid(raw: &str) -> Option<String> {
    let dashed = raw.replace('_', "-").to_ascii_lowercase();
    let bytes = dashed.as_bytes();
    let is_static_hash = bytes.len() == 32 && bytes.iter().all(u8::is_ascii_hexdigit);
    let is_uuid = bytes.len() == 36
        && bytes
            .iter()
            .enumerate()
            .all(|(position, byte)| match position {
                8 | 13 | 18 | 23 => *byte == b'-',
                _ => byte.is_ascii_hexdigit(),
            });
    (is_static_hash || is_uuid).then_some(dashed)
}

/// A container id: exactly 64 hex digits, returned lowercase.
pub(crate) fn normalize_container_id(raw: &str) -> Option<String> {
    (raw.len() == 64 && raw.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then(|| raw.to_ascii_lowercase())
}

/// `kubepods-burstable-pod<uid_>.slice`, `kubepods-pod<uid_>.slice`, with any prefix before
/// `kubepods` (kind's `kubelet-kubepods-...`): systemd slice names repeat their whole ancestry.
fn parse_systemd_pod_slice(component: &str) -> Option<(String, QosClass)> {
    let stem = component.strip_suffix(".slice")?;
    let mut parts = stem.rsplit('-');
    let uid = parts.next()?.strip_prefix("pod")?;
    let qos = match parts.next()? {
        "burstable" => QosClass::Burstable,
        "besteffort" => QosClass::BestEffort,
        "kubepods" => return Some((normalize_pod_uid(uid)?, QosClass::Guaranteed)),
        _ => return None,
    };
    if parts.next()? != "kubepods" {
        return None;
    }
    Some((normalize_pod_uid(uid)?, qos))
}

/// `pod<uid>` whose parent is `burstable`/`besteffort` below `kubepods`, or `kubepods` itself.
fn parse_cgroupfs_pod_dir(component: &str, ancestors: &[&str]) -> Option<(String, QosClass)> {
    let uid = component.strip_prefix("pod")?;
    let qos = match ancestors {
        [.., "kubepods"] => QosClass::Guaranteed,
        [.., "kubepods", "burstable"] => QosClass::Burstable,
        [.., "kubepods", "besteffort"] => QosClass::BestEffort,
        _ => return None,
    };
    Some((normalize_pod_uid(uid)?, qos))
}

/// `<slice>:<prefix>:<id>`; `None` unless the component has exactly two colons.
fn split_colon_form(component: &str) -> Option<(&str, &str, &str)> {
    let mut fields = component.split(':');
    let (Some(slice), Some(prefix), Some(id), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    Some((slice, prefix, id))
}

/// The component right below the pod's: `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope`, or the cgroupfs forms `crio-<id>`, `docker-<id>` and a bare `<id>`.
fn parse_container_component(component: &str) -> Option<(Runtime, String)> {
    let stem = component.strip_suffix(".scope").unwrap_or(component);
    if stem.starts_with("crio-conmon-") {
        return None;
    }
    let (runtime, id) = if let Some(id) = stem.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, id)
    } else if let Some(id) = stem.strip_prefix("crio-") {
        (Runtime::Crio, id)
    } else if let Some(id) = stem.strip_prefix("docker-") {
        (Runtime::Docker, id)
    } else {
        (Runtime::Unknown, stem)
    };
    Some((runtime, normalize_container_id(id)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: NamespaceRoots<'static> = NamespaceRoots::HOST;

    /// Checks every line of a path table (format in the fixtures' headers), naming the failing
    /// line; a line with a path alone expects `None`.
    #[track_caller]
    fn check_path_table(table_name: &str, table: &str) {
        let mut checked = 0;
        for (index, line) in table.lines().enumerate() {
            let mut fields = line.split_whitespace();
            let Some(path) = fields.next().filter(|path| !path.starts_with('#')) else {
                continue;
            };
            let expected = fields.collect::<Vec<_>>().join(" ");
            let actual = parse_cgroup_path(path).map_or_else(String::new, |pod| {
                let container_id = pod.container_id.as_deref().unwrap_or("-");
                let (qos, runtime) = (pod.qos.as_str(), pod.runtime.as_str());
                format!("{} {qos} {container_id} {runtime}", pod.pod_uid)
            });
            assert_eq!(
                actual,
                expected,
                "{table_name}:{}: parsing {path:?}",
                index + 1
            );
            checked += 1;
        }
        assert!(checked > 0, "{table_name} has no paths");
    }

    #[test]
    fn systemd_driver_paths_give_pod_uid_qos_and_container_id() {
        check_path_table(
            "cgroup_paths_systemd.txt",
            include_str!("fixtures/cgroup_paths_systemd.txt"),
        );
    }

    #[test]
    fn cgroupfs_driver_paths_give_pod_uid_qos_and_container_id() {
        check_path_table(
            "cgroup_paths_cgroupfs.txt",
            include_str!("fixtures/cgroup_paths_cgroupfs.txt"),
        );
    }

    #[test]
    fn pods_are_found_below_kind_minikube_and_k3s_node_prefixes() {
        check_path_table(
            "cgroup_paths_nested.txt",
            include_str!("fixtures/cgroup_paths_nested.txt"),
        );
    }

    #[test]
    fn host_paths_conmon_and_malformed_uids_or_ids_are_not_pods() {
        check_path_table(
            "cgroup_paths_not_pods.txt",
            include_str!("fixtures/cgroup_paths_not_pods.txt"),
        );
        assert_eq!(parse_cgroup_path(""), None, "the empty path is no pod's");
    }

    #[test]
    fn crio_conmon_scope_is_never_attributed_to_a_container() {
        let path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod207aaad1_659f_4db8_88e0_46e0cdcc3004.slice/crio-conmon-32da98c8522068be05a7510a3eddb09cad6ed2f03286180d0e931d0d0b6224a6.scope";
        assert_eq!(
            parse_cgroup_path(path),
            None,
            "conmon is CRI-O's monitor, not the container"
        );
    }

    #[test]
    fn qos_and_runtime_names_are_lowercase_words() {
        let qos = [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ]
        .map(QosClass::as_str);
        assert_eq!(qos, ["guaranteed", "burstable", "besteffort"]);
        let runtimes = [
            Runtime::Containerd,
            Runtime::Crio,
            Runtime::Docker,
            Runtime::Unknown,
        ]
        .map(Runtime::as_str);
        assert_eq!(runtimes, ["containerd", "crio", "docker", "unknown"]);
    }

    #[test]
    fn v2_only_proc_cgroup_gives_unified_path_and_pod() {
        let content = include_str!("fixtures/proc_cgroup_v2_systemd_containerd.txt");
        let cgroups = process_cgroups(content, &HOST).expect("v2 fixture parses");
        let unified = cgroups.unified.expect("v2 fixture has a 0:: line");
        assert!(
            unified.starts_with("/kubepods.slice/"),
            "unified path {unified:?}"
        );
        assert_eq!(
            cgroups.memory_v1, None,
            "no v1 hierarchies on a v2-only host"
        );
        let pod = cgroups.pod.expect("v2 fixture is a pod's container");
        assert_eq!(pod.pod_uid, "03f3f104-3215-44f2-9686-d4dd1f05a7ed");
        assert_eq!(
            pod.container_id.as_deref(),
            Some("09d185410c4e25236cc24717f881589bb0978b24eafd101624e627a4dd8d3439")
        );
    }

    #[test]
    fn v1_only_proc_cgroup_gives_memory_path_and_pod_without_unified() {
        let content = include_str!("fixtures/proc_cgroup_v1_cgroupfs_docker.txt");
        let lines = parse_proc_cgroup(content).expect("v1 fixture parses");
        assert_eq!(lines.len(), 11, "one line per v1 hierarchy");
        let cpu = lines
            .iter()
            .find(|line| line.hierarchy_id == 3)
            .expect("hierarchy 3 is listed");
        assert_eq!(
            cpu.controllers,
            ["cpu", "cpuacct"],
            "co-mounted controllers are split on commas"
        );
        let cgroups = process_cgroups(content, &HOST).expect("v1 fixture parses");
        assert_eq!(cgroups.unified, None, "no 0:: line on a v1-only host");
        let memory_path = cgroups.memory_v1.expect("v1 fixture has a memory line");
        assert!(
            memory_path.starts_with("/kubepods/burstable/pod6a4ce4a0-"),
            "memory path {memory_path:?}"
        );
        assert_eq!(
            cgroups.pod,
            parse_cgroup_path(&memory_path),
            "the pod comes from the memory line"
        );
        assert!(cgroups.pod.is_some(), "v1 fixture is a pod's container");
    }

    #[test]
    fn hybrid_proc_cgroup_falls_back_to_memory_line_when_unified_is_the_runtime_service() {
        let content = include_str!("fixtures/proc_cgroup_hybrid_cgroupfs.txt");
        let cgroups = process_cgroups(content, &HOST).expect("hybrid fixture parses");
        assert_eq!(
            cgroups.unified.as_deref(),
            Some("/reserved.slice/containerd.service")
        );
        let pod = cgroups.pod.expect("the v1 lines name the pod");
        assert_eq!(pod.pod_uid, "8833712d-6e69-4f5c-95f3-aebd020ce2e7");
        assert_eq!(pod.qos, QosClass::Burstable);
        assert_eq!(
            pod.container_id.as_deref(),
            Some("95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8")
        );
    }

    #[test]
    fn hybrid_systemd_proc_cgroup_gives_the_same_pod_on_every_line() {
        let content = include_str!("fixtures/proc_cgroup_hybrid_systemd_crio.txt");
        let cgroups = process_cgroups(content, &HOST).expect("hybrid fixture parses");
        assert_eq!(
            cgroups.unified, cgroups.memory_v1,
            "unified and memory paths agree"
        );
        let pod = cgroups.pod.expect("hybrid fixture is a pod's container");
        assert_eq!(
            (pod.qos, pod.runtime),
            (QosClass::BestEffort, Runtime::Crio)
        );
    }

    #[test]
    fn host_processes_have_cgroups_but_no_pod() {
        let content = include_str!("fixtures/proc_cgroup_v1_host_service.txt");
        let service = process_cgroups(content, &HOST).expect("service fixture parses");
        assert_eq!(
            service.memory_v1.as_deref(),
            Some("/system.slice/ssh.service")
        );
        assert_eq!(
            service.unified.as_deref(),
            Some("/system.slice/ssh.service")
        );
        assert_eq!(service.pod, None, "sshd is not in a pod");
        // A sandbox's own process: hybrid, memory bound to v1 in a non-pod cgroup, v2 at the root.
        let content = include_str!("fixtures/proc_cgroup_hybrid_sandbox.txt");
        let sandbox = process_cgroups(content, &HOST).expect("sandbox fixture parses");
        assert_eq!(sandbox.unified.as_deref(), Some("/"));
        assert!(
            sandbox.memory_v1.is_some(),
            "the sandbox binds memory to v1: {sandbox:?}"
        );
        assert_eq!(sandbox.pod, None, "the sandbox is not a pod");
    }

    #[test]
    fn cut_or_garbage_proc_cgroup_files_fail_at_their_line_and_a_cut_path_is_no_pod() {
        let error = process_cgroups(include_str!("fixtures/proc_cgroup_truncated_v1.txt"), &HOST)
            .expect_err("a v1 file cut mid-line");
        assert!(
            matches!(error, CgroupError::MissingSeparator { line_number: 6, .. }),
            "got {error:?}"
        );
        let error = process_cgroups(include_str!("fixtures/proc_cgroup_garbage.txt"), &HOST)
            .expect_err("/proc/PID/status is no cgroup file");
        assert!(
            matches!(error, CgroupError::MissingSeparator { line_number: 1, .. }),
            "got {error:?}"
        );
        let cut = process_cgroups(include_str!("fixtures/proc_cgroup_truncated_v2.txt"), &HOST)
            .expect("a v2 path cut short is still a path");
        assert!(
            cut.unified.is_some() && cut.pod.is_none(),
            "a cut pod slice names no pod: {cut:?}"
        );
        // Cgroup names are any bytes; the daemon reads them lossily, and the ids are ASCII.
        let nested = include_bytes!("fixtures/proc_cgroup_v2_nested_non_utf8.txt");
        let pod = process_cgroups(&String::from_utf8_lossy(nested), &HOST)
            .expect("a lossy non-UTF-8 name parses")
            .pod
            .expect("a cgroup below a container's is that container's");
        assert_eq!(
            pod.container_id.as_deref(),
            Some("09d185410c4e25236cc24717f881589bb0978b24eafd101624e627a4dd8d3439")
        );
    }

    #[test]
    fn pod_lookup_prefers_memory_then_systemd_then_other_lines() {
        let guaranteed = "/kubepods/poda38c12e8-255a-11e9-8cd9-0007cb0b2cc8";
        let besteffort = "/kubepods/besteffort/pod0d08203e-255a-11e9-8cd9-0007cb0b2cc8";
        let content = format!("3:cpu:{guaranteed}\n2:memory:/\n1:name=systemd:{besteffort}\n");
        let pod = process_cgroups(&content, &HOST)
            .expect("parses")
            .pod
            .expect("a line names a pod");
        assert_eq!(pod.qos, QosClass::BestEffort, "name=systemd wins over cpu");
        let content =
            format!("3:cpu:{guaranteed}\n2:memory:{besteffort}\n1:name=systemd:{guaranteed}\n");
        let pod = process_cgroups(&content, &HOST)
            .expect("parses")
            .pod
            .expect("a line names a pod");
        assert_eq!(
            pod.qos,
            QosClass::BestEffort,
            "memory wins over name=systemd"
        );
        let content = format!("3:cpu:{guaranteed}\n2:memory:/\n1:name=systemd:/\n");
        let pod = process_cgroups(&content, &HOST)
            .expect("parses")
            .pod
            .expect("the cpu line names a pod");
        assert_eq!(
            pod.qos,
            QosClass::Guaranteed,
            "any other line is the last resort"
        );
    }

    #[test]
    fn paths_keep_their_colons_and_lose_the_deleted_mark() {
        let colon_path = "/system.slice/containerd.service/kubepods-burstable-pod4ed02c0b_0df8_4d14_a30e_fd589ee4143a.slice:cri-containerd:d4a9f9195eaf7e4a729f24151101e1de61f1398677e7b82acfb936dff0b4ce55";
        let deleted_path = "/kubepods/pod0d08203e-255a-11e9-8cd9-0007cb0b2cc8";
        let content = format!("0::{colon_path}\n0::{deleted_path} (deleted)\n");
        let lines = parse_proc_cgroup(&content).expect("parses");
        let expected = CgroupLine {
            hierarchy_id: 0,
            controllers: vec![],
            path: colon_path.to_owned(),
            deleted: false,
        };
        assert_eq!(
            lines[0], expected,
            "colons after the second belong to the path"
        );
        assert_eq!(
            (lines[1].path.as_str(), lines[1].deleted),
            (deleted_path, true)
        );
        let cgroups = process_cgroups(&content, &HOST).expect("parses");
        assert_eq!(
            cgroups.pod.map(|pod| pod.runtime),
            Some(Runtime::Containerd)
        );
    }

    #[test]
    fn paths_from_a_private_cgroup_namespace_resolve_against_its_roots_place() {
        // Read by an agent whose namespace roots are its own container's cgroups,
        // /kubepods/burstable/pod<agent>/<id> in each v1 hierarchy: the pod beside it shows
        // as /../../pod<uid>/<id>, without the kubepods and QoS ancestors that name it a pod.
        let content = include_str!("fixtures/proc_cgroup_v1_cgroupfs_private_namespace.txt");
        let agent = "/kubepods/burstable/pod0c1d0a4e-5b1e-4c2a-9d3e-7f1a2b3c4d5e/aaaa";
        let roots = NamespaceRoots {
            unified: None,
            memory_v1: Some(agent),
        };
        let cgroups = process_cgroups(content, &roots).expect("parses");
        let expected = "/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/17db96a24ae1e9dd57143e62b1cb0d2d35e693c65c774c7470e87b0572e07c1a";
        assert_eq!(cgroups.memory_v1.as_deref(), Some(expected));
        let pod = cgroups.pod.expect("the resolved memory path names the pod");
        assert_eq!(
            (pod.pod_uid.as_str(), pod.qos),
            ("6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e", QosClass::Burstable)
        );
        let unresolved = process_cgroups(content, &NamespaceRoots::default()).expect("parses");
        assert_eq!(
            unresolved,
            ProcessCgroups::default(),
            "without the roots' places, no path and no pod"
        );

        // v2, systemd driver: the agent in a burstable pod, the pod read in besteffort.
        let content = include_str!("fixtures/proc_cgroup_v2_private_namespace.txt");
        let agent = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c1d0a4e_5b1e_4c2a_9d3e_7f1a2b3c4d5e.slice/cri-containerd-aaaa.scope";
        let roots = NamespaceRoots {
            unified: Some(agent),
            memory_v1: None,
        };
        let cgroups = process_cgroups(content, &roots).expect("parses");
        let unified = cgroups.unified.expect("resolves");
        assert!(
            unified.starts_with(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod03f3f104_"
            ),
            "{unified}"
        );
        assert_eq!(cgroups.pod, parse_cgroup_path(&unified));
        let outside = process_cgroups(content, &HOST).expect("parses");
        assert_eq!(outside.unified, None, "above the mount's root");
        assert_eq!(
            outside.pod, cgroups.pod,
            "systemd slice names still name the pod unresolved"
        );
    }

    #[test]
    fn empty_proc_cgroup_gives_nothing_without_error() {
        assert_eq!(
            process_cgroups("", &HOST).expect("empty content is fine"),
            ProcessCgroups::default()
        );
        assert_eq!(
            process_cgroups("\n\n", &HOST).expect("blank lines are fine"),
            ProcessCgroups::default()
        );
    }

    #[test]
    fn malformed_proc_cgroup_lines_are_errors_naming_the_line() {
        let error = parse_proc_cgroup("0::/\n12memory/kubepods\n").expect_err("missing colons");
        assert!(
            matches!(&error, CgroupError::MissingSeparator { line_number: 2, line } if line == "12memory/kubepods"),
            "got {error:?}"
        );
        let error = parse_proc_cgroup("12:memory\n").expect_err("one colon only");
        assert!(
            matches!(error, CgroupError::MissingSeparator { line_number: 1, .. }),
            "got {error:?}"
        );
        let error =
            parse_proc_cgroup("1:cpu:/\nx1:memory:/kubepods\n").expect_err("non-numeric id");
        assert!(
            matches!(&error, CgroupError::InvalidHierarchyId { line_number: 2, hierarchy_id, .. } if hierarchy_id == "x1"),
            "got {error:?}"
        );
        assert_eq!(
            error.to_string(),
            "/proc/PID/cgroup line 2: hierarchy id \"x1\" is not a number"
        );
        let error = parse_proc_cgroup("-1:memory:/\n").expect_err("negative id");
        assert!(
            matches!(error, CgroupError::InvalidHierarchyId { .. }),
            "got {error:?}"
        );
        let error = parse_proc_cgroup("0::kubepods\n").expect_err("relative path");
        assert!(
            matches!(error, CgroupError::RelativePath { line_number: 1, .. }),
            "got {error:?}"
        );
        assert!(
            process_cgroups("garbage", &HOST).is_err(),
            "process_cgroups reports the same errors"
        );
    }
}
