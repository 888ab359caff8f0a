//! Selectors from the API and CLI (`NAMESPACE/POD`, pod uids, container names: tracer-parse's
//! `selector`, which the agent and tracerctl both use) and the selection's glob patterns.
//! Input: one field per line. What validates is a clean Kubernetes
//! name that round-trips; excludes and explicit stops always win.

#![no_main]

use glob::Pattern;
use libfuzzer_sys::fuzz_target;
use tracer_parse::{
    select::{Explicit, Selection, SelectionConfig},
    selector::{Selector, Target},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.split('\n');
    let mut field = || fields.next().unwrap_or_default();
    let (pod, container, uid) = (field(), field(), field());
    let container = (!container.is_empty()).then(|| container.to_owned());

    if let Ok(selector) = Selector::parse_pod(pod, container.clone()) {
        let Target::Pod { namespace, name } = &selector.target else {
            panic!("parse_pod gave {selector:?}");
        };
        for part in [namespace, name].into_iter().chain(&selector.container) {
            assert!(
                !part.is_empty() && part.len() <= 253 && !part.contains(['/', '_', ' ']),
                "{pod:?} gave {selector:?}"
            );
        }
        let written = format!("{namespace}/{name}");
        let reparsed = Selector::parse_pod(&written, selector.container.clone());
        assert_eq!(reparsed.as_ref(), Ok(&selector), "{written:?}");
        assert!(selector.to_string().starts_with("pod "), "{selector}");
    }
    if let Ok(selector) = Selector::new(Target::PodUid(uid.to_owned()), None) {
        let Target::PodUid(normalized) = &selector.target else {
            panic!("{selector:?}");
        };
        assert_eq!(normalized.len(), 36, "{selector:?}");
        assert_eq!(*normalized, normalized.to_ascii_lowercase(), "{selector:?}");
        let again = Selector::new(Target::PodUid(normalized.clone()), None);
        assert_eq!(
            again.as_ref(),
            Ok(&selector),
            "uid validation is not idempotent"
        );
    }

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
    assert!(selection.selects("uid", Some(namespace), Some(name), container.as_deref()));
    selection.stop(whole_pod);
    assert!(!selection.selects("uid", Some(namespace), Some(name), container.as_deref()));
});
