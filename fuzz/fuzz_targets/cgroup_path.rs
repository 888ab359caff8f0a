//! Cgroup paths and /proc/PID/cgroup content: whatever parses names a well-formed pod and
//! container, and the kubelet's own layouts for that pod parse back to it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_parse::cgroup::{self, PodCgroup, QosClass, Runtime};
use tracer_parse::cgroup_namespace::{self, NamespaceRoots};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(pod) = cgroup::parse_cgroup_path(text) {
        check_pod(&pod);
    }
    // Namespace-relative paths resolve to paths below the root, never climbing.
    let (root, relative) = text.split_once(' ').unwrap_or(("/", text));
    if let Some(path) = cgroup_namespace::resolve_cgroup_path(root, relative) {
        assert!(
            path.starts_with('/') && path.split('/').all(|part| part != ".." && part != "."),
            "{root:?} + {relative:?} gave {path:?}"
        );
    }
    if let Some(levels) = cgroup_namespace::levels_above_namespace_root(text) {
        assert_eq!(text.matches("..").count(), levels, "{text:?}");
    }
    match cgroup::parse_proc_cgroup(text) {
        Ok(lines) => {
            for line in &lines {
                assert!(line.path.starts_with('/'), "relative path kept: {line:?}");
                assert!(!line.path.contains('\n'), "path spans lines: {line:?}");
                for controller in &line.controllers {
                    assert!(
                        !controller.is_empty() && !controller.contains(','),
                        "controller list not split: {line:?}"
                    );
                }
            }
            let cgroups = cgroup::process_cgroups(text, &NamespaceRoots::HOST)
                .expect("process_cgroups accepts what parse_proc_cgroup accepts");
            let unified = lines.iter().find(|line| line.hierarchy_id == 0);
            let resolved = |path: &str| cgroup_namespace::resolve_cgroup_path("/", path);
            assert_eq!(cgroups.unified, unified.and_then(|line| resolved(&line.path)));
            if let Some(pod) = &cgroups.pod {
                check_pod(pod);
                let from_a_line = lines.iter().any(|line| {
                    let resolved = resolved(&line.path);
                    [Some(line.path.as_str()), resolved.as_deref()]
                        .into_iter()
                        .flatten()
                        .any(|path| cgroup::parse_cgroup_path(path).as_ref() == Some(pod))
                });
                assert!(from_a_line, "pod {pod:?} comes from no line");
            }
        }
        Err(error) => {
            assert!(
                cgroup::process_cgroups(text, &NamespaceRoots::HOST).is_err(),
                "process_cgroups accepts what parse_proc_cgroup rejects: {error}"
            );
        }
    }
});

/// The ids are normalized, and the canonical paths of the pod's layout give the same pod back.
fn check_pod(pod: &PodCgroup) {
    let uid = pod.pod_uid.as_str();
    let is_uid_char = |byte: u8| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
    let uid_ok = match uid.len() {
        32 => uid.bytes().all(is_uid_char),
        36 => uid
            .bytes()
            .enumerate()
            .all(|(position, byte)| match position {
                8 | 13 | 18 | 23 => byte == b'-',
                _ => is_uid_char(byte),
            }),
        _ => false,
    };
    assert!(uid_ok, "pod uid not normalized: {pod:?}");
    match &pod.container_id {
        Some(id) => assert!(
            id.len() == 64 && id.bytes().all(is_uid_char),
            "container id not 64 lowercase hex digits: {pod:?}"
        ),
        None => assert_eq!(pod.runtime, Runtime::Unknown, "{pod:?}"),
    }
    let (qos_dir, qos_slices) = match pod.qos {
        QosClass::Guaranteed => ("", String::new()),
        QosClass::Burstable => ("burstable/", "/kubepods-burstable.slice".to_owned()),
        QosClass::BestEffort => ("besteffort/", "/kubepods-besteffort.slice".to_owned()),
    };
    let qos_prefix = match pod.qos {
        QosClass::Guaranteed => "kubepods-".to_owned(),
        qos => format!("kubepods-{}-", qos.as_str()),
    };
    let pod_slice = format!(
        "/kubepods.slice{qos_slices}/{qos_prefix}pod{}.slice",
        uid.replace('-', "_")
    );
    let pod_dir = format!("/kubepods/{qos_dir}pod{uid}");
    let canonical = match (&pod.container_id, pod.runtime) {
        (None, _) => pod_slice.clone(),
        (Some(id), Runtime::Containerd) => format!("{pod_slice}/cri-containerd-{id}.scope"),
        (Some(id), Runtime::Crio) => format!("{pod_slice}/crio-{id}.scope"),
        (Some(id), Runtime::Docker) => format!("{pod_slice}/docker-{id}.scope"),
        (Some(id), Runtime::Unknown) => format!("{pod_dir}/{id}"),
    };
    assert_eq!(
        cgroup::parse_cgroup_path(&canonical).as_ref(),
        Some(pod),
        "canonical path {canonical:?} does not give the pod back"
    );
    if pod.container_id.is_none() {
        assert_eq!(cgroup::parse_cgroup_path(&pod_dir).as_ref(), Some(pod));
    }
}
