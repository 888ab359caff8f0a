//! Cgroup paths as a process in a cgroup namespace of its own reads them: relative to its
//! namespace root (`/../../kubepods/...` in /proc/PID/cgroup, `/../..` as a mount's root in
//! mountinfo). Once the namespace root's place below a mount is known (the daemon finds it in
//! the mounted hierarchy), these are the paths below that mount's root.

/// This process's cgroup namespace root in each hierarchy the tracer reads, as a path below
/// that hierarchy's mount root (`/` when the mount's root is the namespace root, as with the
/// host's namespace and the host's mount); `None` where it is not known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceRoots<'root> {
    /// In the unified (v2) hierarchy.
    pub unified: Option<&'root str>,
    /// In the v1 hierarchy with the memory controller.
    pub memory_v1: Option<&'root str>,
}

impl NamespaceRoots<'static> {
    /// A process in the host's cgroup namespace, with the hierarchies mounted whole: paths are
    /// taken as they are.
    pub const HOST: Self = Self {
        unified: Some("/"),
        memory_v1: Some("/"),
    };
}

/// How many levels a mount's root (mountinfo's fourth field) lies above the reader's cgroup
/// namespace root: 0 for `/` (the namespace root itself), `n` for `/..` written `n` times.
/// `None` for any other root: a subtree that is not an ancestor of the namespace root.
pub fn levels_above_namespace_root(mount_root: &str) -> Option<usize> {
    let rest = mount_root.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.split('/')
        .try_fold(0_usize, |levels, part| (part == "..").then_some(levels + 1))
}

/// The path below a mount's root of `relative`, a cgroup path relative to the reader's
/// namespace root (as in /proc/PID/cgroup), given `namespace_root`, the namespace root's path
/// below that mount's root. `None` when the path climbs above the mount's root (a cgroup the
/// mount does not show) or is not absolute.
///
/// `resolve_cgroup_path("/kubepods/burstable/podA/ctr", "/../../podB/ctr")` is
/// `/kubepods/burstable/podB/ctr`.
pub fn resolve_cgroup_path(namespace_root: &str, relative: &str) -> Option<String> {
    let relative = relative.strip_prefix('/')?;
    let mut parts: Vec<&str> = Vec::new();
    let root_parts = namespace_root.strip_prefix('/')?.split('/');
    for part in root_parts.chain(relative.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            name => parts.push(name),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_root_of_only_parent_steps_says_how_far_above_the_namespace_root_it_is() {
        for (root, levels) in [
            ("/", Some(0)),
            ("/..", Some(1)),
            ("/../../../..", Some(4)),
            // A subtree beside or below the namespace root, or garbage.
            ("/../kubepods", None),
            ("/kubepods.slice/kubepods-pod16e6a747.slice", None),
            ("/../", None),
            ("/..//..", None),
            ("..", None),
            ("", None),
        ] {
            assert_eq!(levels_above_namespace_root(root), levels, "{root:?}");
        }
    }

    #[test]
    fn namespace_relative_paths_resolve_below_the_namespace_roots_place() {
        let root = "/kubepods/burstable/tracer-agent/agent";
        for (relative, resolved) in [
            ("/", Some(root)),
            (
                "/child",
                Some("/kubepods/burstable/tracer-agent/agent/child"),
            ),
            // A pod beside the agent's: the common ancestor sits below the hierarchy's root.
            (
                "/../../pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/abc",
                Some("/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/abc"),
            ),
            ("/../../../..", Some("/")),
            ("/../../../../system.slice", Some("/system.slice")),
            // Above the mount's root: not a cgroup this mount shows.
            ("/../../../../..", None),
            ("/../../../../../x", None),
            ("relative", None),
            ("", None),
        ] {
            assert_eq!(
                resolve_cgroup_path(root, relative).as_deref(),
                resolved,
                "{relative:?}"
            );
        }
    }

    #[test]
    fn in_the_hosts_namespace_paths_stay_as_they_are() {
        let path = "/kubepods.slice/kubepods-burstable.slice/cri-containerd-1.scope";
        assert_eq!(resolve_cgroup_path("/", path).as_deref(), Some(path));
        assert_eq!(resolve_cgroup_path("/", "/").as_deref(), Some("/"));
        assert_eq!(resolve_cgroup_path("/", "/../x.slice"), None);
        assert_eq!(resolve_cgroup_path("not absolute", path), None);
    }
}
