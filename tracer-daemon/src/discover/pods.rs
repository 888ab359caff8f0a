//! Pod identities (namespace, name, containers) from the names of the kubelet's log
//! directories, so the node agent can label pods without asking the API server. The names are
//! parsed by `tracer_parse::kubelet_logs`; this module lists the directories.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracer_parse::kubelet_logs::is_container_name;
use tracing::warn;

pub use tracer_parse::kubelet_logs::{
    ContainerLogName, LogNameError, PodIdentity, parse_container_log_name, parse_pod_dir_name,
};

/// Where the kubelet keeps one directory per pod: `<namespace>_<name>_<uid>/<container>/`.
pub const DEFAULT_POD_LOG_ROOT: &str = "/var/log/pods";

/// Where the kubelet keeps one symlink per container:
/// `<pod>_<namespace>_<container>-<container id>.log`.
pub const DEFAULT_CONTAINER_LOG_ROOT: &str = "/var/log/containers";

/// Reads `<root>/<namespace>_<name>_<uid>/<container>/` directories (root is usually
/// [`DEFAULT_POD_LOG_ROOT`]), keyed by pod UID.
///
/// Odd entries (a name that does not split into exactly namespace_name_uid, a UID that is not
/// a pod UID, a file instead of a directory, an unreadable directory) are skipped with a warning
/// naming the entry, never an error; a missing root gives an empty map.
pub fn read_pod_log_dirs(root: &Path) -> HashMap<String, PodIdentity> {
    let mut pods = HashMap::new();
    for (entry_path, name) in list_root(root, EntryKind::Directory) {
        let identity = match parse_pod_dir_name(&name) {
            Ok(identity) => identity,
            Err(reason) => {
                warn!(entry = %entry_path.display(), %reason, "skipping pod log directory");
                continue;
            }
        };
        let containers = match read_container_dirs(&entry_path) {
            Ok(containers) => containers,
            Err(error) => {
                warn!(entry = %entry_path.display(), %error, "skipping unreadable pod log directory");
                continue;
            }
        };
        let identity = PodIdentity {
            containers,
            ..identity
        };
        if let Some(previous) = pods.insert(identity.uid.clone(), identity) {
            warn!(entry = %entry_path.display(), uid = %previous.uid, "two pod directories share a uid; keeping the last");
        }
    }
    pods
}

/// Reads `<root>/<pod>_<namespace>_<container>-<64 hex id>.log` names (root is usually
/// [`DEFAULT_CONTAINER_LOG_ROOT`]), keyed by container id.
///
/// The entries are symlinks into the pod log directories: only their names are read, never
/// their targets. Odd names are skipped with a warning, among them the names the kubelet cut
/// at 255 bytes (pods with very long names), which lose the id.
pub fn read_container_log_names(root: &Path) -> HashMap<String, ContainerLogName> {
    let mut containers = HashMap::new();
    for (entry_path, name) in list_root(root, EntryKind::NotDirectory) {
        match parse_container_log_name(&name) {
            Ok(container) => {
                containers.insert(container.container_id.clone(), container);
            }
            Err(reason) => {
                warn!(entry = %entry_path.display(), %reason, "skipping container log name");
            }
        }
    }
    containers
}

/// Which directory entries [`list_entries`] keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    /// Real directories (symlinks to directories are not followed).
    Directory,
    /// Anything but a directory: files and symlinks.
    NotDirectory,
}

/// The entries of a log root; a missing root gives none, silently (the node may run no pods
/// yet, or no kubelet at all), an unreadable one none with a warning.
fn list_root(root: &Path, wanted: EntryKind) -> Vec<(PathBuf, String)> {
    match list_entries(root, wanted) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            warn!(root = %root.display(), %error, "cannot list kubelet log directory");
            Vec::new()
        }
    }
}

/// The entries of `directory` of the wanted kind with UTF-8 names, with a warning for each other.
fn list_entries(directory: &Path, wanted: EntryKind) -> io::Result<Vec<(PathBuf, String)>> {
    let mut kept = Vec::new();
    for entry in fs::read_dir(directory)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                warn!(directory = %directory.display(), %error, "cannot read a directory entry");
                continue;
            }
        };
        let entry_path = entry.path();
        let is_directory = match entry.file_type() {
            Ok(file_type) => file_type.is_dir(),
            Err(error) => {
                warn!(entry = %entry_path.display(), %error, "skipping entry of unknown type");
                continue;
            }
        };
        if is_directory != (wanted == EntryKind::Directory) {
            let reason = if is_directory {
                "a directory"
            } else {
                "not a directory"
            };
            warn!(entry = %entry_path.display(), reason, "skipping kubelet log entry of the wrong type");
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) => kept.push((entry_path, name)),
            Err(_) => warn!(entry = %entry_path.display(), "skipping entry with a non-UTF-8 name"),
        }
    }
    Ok(kept)
}

/// The container directories of one pod log directory, sorted.
fn read_container_dirs(pod_dir: &Path) -> io::Result<Vec<String>> {
    let mut containers = Vec::new();
    for (entry_path, name) in list_entries(pod_dir, EntryKind::Directory)? {
        if is_container_name(&name) {
            containers.push(name);
        } else {
            warn!(entry = %entry_path.display(), "skipping container log directory: not a container name");
        }
    }
    containers.sort();
    Ok(containers)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::discover::test_log::{assert_one_warning, capture_warnings};

    const WEB_UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const ETCD_UID: &str = "1d5b3a9c5f2e8e0d4c6b7a8f9e0d1c2b";
    const PROMETHEUS_UID: &str = "8c1b6f2e-7d3a-4e59-9b0c-2f4a6d8e0b13";
    const NGINX_ID: &str = "4c8e5b2a9f0d1e3c6b7a8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";
    const COREDNS_ID: &str = "d3b07384d113edec49eaa6238ad5ff00c86e7f0e1c2b3a4958677a6b5c4d3e2f";
    const PROMETHEUS_ID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

    /// A directory tree under the temp dir, removed on drop.
    struct TempTree {
        root: PathBuf,
    }

    impl TempTree {
        fn new(label: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = NEXT.fetch_add(1, Ordering::Relaxed);
            let root = std::env::temp_dir().join(format!(
                "tracer-pods-{label}-{}-{unique}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).expect("create the temp tree root");
            Self { root }
        }

        fn directory(&self, relative: &str) {
            let path = self.root.join(relative);
            fs::create_dir_all(&path)
                .unwrap_or_else(|error| panic!("create {}: {error}", path.display()));
        }

        fn file(&self, relative: &str) {
            let path = self.root.join(relative);
            fs::write(&path, "log line\n")
                .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
        }

        fn symlink(&self, relative: &str, target: &str) {
            let path = self.root.join(relative);
            std::os::unix::fs::symlink(target, &path)
                .unwrap_or_else(|error| panic!("symlink {}: {error}", path.display()));
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn pod_log_dirs_give_namespace_name_uid_and_sorted_containers() {
        let tree = TempTree::new("pods");
        let web = format!("default_web-0_{WEB_UID}");
        for container in ["nginx", "istio-proxy", "init-config"] {
            tree.directory(&format!("{web}/{container}"));
        }
        tree.file(&format!("{web}/nginx/0.log"));
        tree.file(&format!("{web}/nginx/1.log"));
        tree.file(&format!("{web}/stray-file"));
        tree.directory(&format!(
            "kube-system_etcd-kind-control-plane_{ETCD_UID}/etcd"
        ));
        tree.directory(&format!(
            "monitoring_prometheus-k8s.example.com-0_{PROMETHEUS_UID}/prometheus"
        ));
        tree.directory(&format!(
            "empty-ns_pending-pod_{}",
            WEB_UID.replace('0', "9")
        ));

        let pods = read_pod_log_dirs(&tree.root);
        assert_eq!(
            pods.len(),
            4,
            "every well-formed pod directory is read: {pods:?}"
        );
        let web = pods.get(WEB_UID).expect("web-0 is keyed by its uid");
        let expected = PodIdentity {
            namespace: "default".to_owned(),
            name: "web-0".to_owned(),
            uid: WEB_UID.to_owned(),
            containers: vec![
                "init-config".to_owned(),
                "istio-proxy".to_owned(),
                "nginx".to_owned(),
            ],
        };
        assert_eq!(
            *web, expected,
            "files inside the pod directory are not containers"
        );
        let etcd = pods
            .get(ETCD_UID)
            .expect("a static pod's 32-hex uid is a pod uid");
        assert_eq!(
            (etcd.namespace.as_str(), etcd.name.as_str()),
            ("kube-system", "etcd-kind-control-plane")
        );
        let prometheus = pods.get(PROMETHEUS_UID).expect("dotted pod names are read");
        assert_eq!(prometheus.name, "prometheus-k8s.example.com-0");
        assert_eq!(prometheus.containers, ["prometheus"]);
    }

    #[test]
    fn odd_pod_log_entries_are_skipped_without_losing_the_rest() {
        let tree = TempTree::new("odd-pods");
        tree.directory(&format!("default_web-0_{WEB_UID}/nginx"));
        tree.directory("default_web-0/nginx");
        tree.directory("ns_pod_not-a-uuid/app");
        tree.directory(&format!("ns_pod_{}/app", &WEB_UID[..35]));
        tree.directory(&format!("a_b_c_{PROMETHEUS_UID}/app"));
        tree.directory(&format!("Default_Web_{PROMETHEUS_UID}/app"));
        tree.directory(&format!("_web_{PROMETHEUS_UID}/app"));
        tree.file(&format!("default_file_{PROMETHEUS_UID}"));
        tree.file("README");
        tree.symlink(
            &format!("default_link_{PROMETHEUS_UID}"),
            &format!("default_web-0_{WEB_UID}"),
        );
        tree.directory(&format!(
            "default_odd-containers_{PROMETHEUS_UID}/Not_A_Container"
        ));

        let pods = read_pod_log_dirs(&tree.root);
        let mut uids: Vec<&str> = pods.keys().map(String::as_str).collect();
        uids.sort_unstable();
        assert_eq!(
            uids,
            [WEB_UID, PROMETHEUS_UID],
            "only well-formed directories are pods: {pods:?}"
        );
        let odd = pods
            .get(PROMETHEUS_UID)
            .expect("the pod with an odd container dir is kept");
        assert_eq!(odd.name, "odd-containers");
        assert!(
            odd.containers.is_empty(),
            "odd container names are skipped: {odd:?}"
        );
    }

    /// The rows of tracer-parse's fixture of pod directory names (its tests pin the parse of
    /// each): name, and `Ok(uid)` or `Err(a word of the reason)`.
    fn pod_dir_name_table() -> Vec<(&'static str, Result<&'static str, &'static str>)> {
        let table = include_str!("../../../tracer-parse/src/fixtures/pod_dir_names.txt");
        let rows: Vec<_> = table
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(
                |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                    [name, "ok", _, _, uid] => (name, Ok(uid)),
                    [name, "skip", word] => (name, Err(word)),
                    _ => panic!("pod_dir_names.txt: bad row {line:?}"),
                },
            )
            .collect();
        assert!(rows.len() > 20, "pod_dir_names.txt has {} rows", rows.len());
        rows
    }

    #[test]
    fn odd_pod_dir_names_are_warned_about_and_the_good_pods_still_found() {
        let tree = TempTree::new("pod-dir-names");
        let table = pod_dir_name_table();
        for (name, _) in &table {
            tree.directory(&format!("{name}/app"));
        }
        // Names a text table cannot hold: not UTF-8, and 255 bytes (the longest a file system
        // allows: the kubelet never cuts pod directory names, so a long one is a real pod).
        let non_utf8 = [b"default_web-\xff_".as_slice(), PROMETHEUS_UID.as_bytes()].concat();
        fs::create_dir_all(tree.root.join(OsStr::from_bytes(&non_utf8)).join("app"))
            .expect("create the non-UTF-8 directory");
        let long_uid = "2d5b3a9c5f2e8e0d4c6b7a8f9e0d1c2b";
        let long_name = format!("ns_{}_{long_uid}", "p".repeat(255 - 3 - 1 - 32));
        assert_eq!(long_name.len(), 255);
        tree.directory(&format!("{long_name}/app"));

        let (pods, log) = capture_warnings(|| read_pod_log_dirs(&tree.root));
        let mut expected: Vec<&str> = table
            .iter()
            .filter_map(|(_, expected)| expected.ok())
            .chain([long_uid])
            .collect();
        expected.sort_unstable();
        let mut found: Vec<&str> = pods.keys().map(String::as_str).collect();
        found.sort_unstable();
        assert_eq!(
            found, expected,
            "every good pod is found next to the odd ones"
        );
        assert_eq!(pods[long_uid].name.len(), 219);
        assert_eq!(pods[WEB_UID].containers, ["app"]);
        for (name, expected) in &table {
            if let Err(word) = expected {
                let entry = format!("{}/{name} ", tree.root.display());
                assert_one_warning(&log, &["skipping pod log directory", &entry, word]);
            }
        }
        assert_one_warning(&log, &["non-UTF-8 name", "default_web-"]);
        let skipped = table
            .iter()
            .filter(|(_, expected)| expected.is_err())
            .count();
        let warnings = log.iter().filter(|line| line.contains("WARN")).count();
        assert_eq!(warnings, skipped + 1, "one warning per odd entry: {log:#?}");
    }

    #[test]
    fn missing_pod_log_root_gives_no_pods() {
        let tree = TempTree::new("missing-pods");
        assert!(
            read_pod_log_dirs(&tree.root.join("absent")).is_empty(),
            "a missing root is no pods"
        );
        tree.file("not-a-directory");
        assert!(
            read_pod_log_dirs(&tree.root.join("not-a-directory")).is_empty(),
            "a file root is no pods"
        );
    }

    #[test]
    fn container_log_symlinks_give_pod_namespace_container_and_id_without_following() {
        let tree = TempTree::new("containers");
        let cases = [
            ("web-0", "default", "nginx", NGINX_ID),
            (
                "coredns-5d78c9869d-8x7qk",
                "kube-system",
                "coredns",
                COREDNS_ID,
            ),
            (
                "prometheus-k8s.example.com-0",
                "monitoring",
                "config-reloader",
                PROMETHEUS_ID,
            ),
        ];
        for (pod, namespace, container, id) in cases {
            // Dangling on purpose: the target lives on the node, not here.
            let target = format!("/var/log/pods/{namespace}_{pod}_{WEB_UID}/{container}/0.log");
            tree.symlink(&format!("{pod}_{namespace}_{container}-{id}.log"), &target);
        }
        let containers = read_container_log_names(&tree.root);
        assert_eq!(
            containers.len(),
            cases.len(),
            "one entry per symlink: {containers:?}"
        );
        for (pod, namespace, container, id) in cases {
            let expected = ContainerLogName {
                pod_name: pod.to_owned(),
                namespace: namespace.to_owned(),
                container: container.to_owned(),
                container_id: id.to_owned(),
            };
            assert_eq!(
                containers.get(id),
                Some(&expected),
                "container {container} of {namespace}/{pod}"
            );
        }
    }

    #[test]
    fn odd_container_log_names_are_skipped_without_losing_the_rest() {
        let tree = TempTree::new("odd-containers");
        tree.file(&format!("web-0_default_nginx-{NGINX_ID}.log"));
        tree.file("web-0_default_nginx.log");
        tree.file(&format!("web-0_default_nginx-{NGINX_ID}.txt"));
        tree.file(&format!("web-0_default_nginx-{}.log", &COREDNS_ID[..63]));
        tree.file(&format!("default_nginx-{COREDNS_ID}.log"));
        tree.file(&format!("a_b_c_nginx-{COREDNS_ID}.log"));
        tree.file(&format!("Web_default_nginx-{COREDNS_ID}.log"));
        tree.file("README.md");
        tree.directory(&format!("web-1_default_nginx-{PROMETHEUS_ID}.log"));
        // The kubelet cuts names at 255 bytes, .log included: a long pod name loses the id.
        let long_pod = "a".repeat(200);
        let truncated = format!("{long_pod}_default_nginx-{COREDNS_ID}");
        tree.file(&format!("{}.log", &truncated[..251]));

        let containers = read_container_log_names(&tree.root);
        let ids: Vec<&str> = containers.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            [NGINX_ID],
            "only the well-formed name is read: {containers:?}"
        );
    }

    #[test]
    fn missing_container_log_root_gives_no_containers() {
        let tree = TempTree::new("missing-containers");
        assert!(
            read_container_log_names(&tree.root.join("absent")).is_empty(),
            "a missing root is none"
        );
    }
}
