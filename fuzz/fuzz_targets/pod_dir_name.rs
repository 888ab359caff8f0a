//! Kubelet log names: `<namespace>_<pod>_<uid>` directories and
//! `<pod>_<namespace>_<container>-<id>.log` symlinks. Whatever parses has clean parts (no `_`,
//! no `/`, a normalized uid or id) and writes back to a name that parses to the same thing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_parse::kubelet_logs;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pod) = kubelet_logs::parse_pod_dir_name(name) {
        for part in [&pod.namespace, &pod.name, &pod.uid] {
            assert!(
                !part.is_empty() && !part.contains(['_', '/', '\0']),
                "{name:?} gave {pod:?}"
            );
        }
        assert!(pod.containers.is_empty(), "a name has no containers");
        assert_eq!(pod.uid, pod.uid.to_ascii_lowercase(), "uid not lowercase");
        assert!(matches!(pod.uid.len(), 32 | 36), "uid {:?}", pod.uid);
        let written = format!("{}_{}_{}", pod.namespace, pod.name, pod.uid);
        assert_eq!(
            kubelet_logs::parse_pod_dir_name(&written),
            Ok(pod),
            "{name:?}"
        );
    }
    if let Ok(container) = kubelet_logs::parse_container_log_name(name) {
        for part in [
            &container.pod_name,
            &container.namespace,
            &container.container,
        ] {
            assert!(
                !part.is_empty() && !part.contains(['_', '/', '\0']),
                "{name:?} gave {container:?}"
            );
        }
        let id = &container.container_id;
        assert!(
            id.len() == 64
                && id
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)),
            "{name:?} gave {container:?}"
        );
        let written = format!(
            "{}_{}_{}-{id}.log",
            container.pod_name, container.namespace, container.container
        );
        assert_eq!(
            kubelet_logs::parse_container_log_name(&written),
            Ok(container),
            "{name:?}"
        );
    }
});
