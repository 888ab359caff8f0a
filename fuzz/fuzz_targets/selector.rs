//! The selection's glob patterns (config file and flags) and explicit starts and stops (API).
//! Input: one field per line; excludes and explicit stops always win.
//!
//! The seeds' first three fields (a `NAMESPACE/POD` selector, a container, a pod uid) were for
//! the API's selector parser, `tracer-daemon/src/agent/selector.rs`; it is not in tracer-parse
//! yet, so only the container is used until it is.

#![no_main]

use glob::Pattern;
use libfuzzer_sys::fuzz_target;
use tracer_parse::select::{Explicit, Selection, SelectionConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.split('\n');
    let mut field = || fields.next().unwrap_or_default();
    let (_selector, container, _uid) = (field(), field(), field());
    let container = (!container.is_empty()).then_some(container);

    let (include_namespace, exclude_namespace, include_pod, exclude_pod) =
        (field(), field(), field(), field());
    let (namespace, name) = (field(), field());
    let config = SelectionConfig {
        namespaces: vec![include_namespace.to_owned()],
        exclude_namespaces: vec![exclude_namespace.to_owned()],
        pods: vec![include_pod.to_owned()],
        exclude_pods: vec![exclude_pod.to_owned()],
        max_processes: None,
    };
    let Ok(mut selection) = Selection::new(&config) else {
        return;
    };
    let selected = selection.selects("uid", Some(namespace), Some(name), None);
    if selected {
        for (pattern, text) in [(exclude_namespace, namespace), (exclude_pod, name)] {
            let pattern = Pattern::new(pattern).expect("compiled above");
            assert!(
                !pattern.matches(text),
                "exclude {pattern} lost to an include"
            );
        }
    }
    let whole_pod = Explicit {
        pod_uid: "uid".to_owned(),
        container: None,
    };
    selection.start(whole_pod.clone());
    assert!(selection.selects("uid", Some(namespace), Some(name), container));
    selection.stop(whole_pod);
    assert!(!selection.selects("uid", Some(namespace), Some(name), container));
});
