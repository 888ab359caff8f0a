//! What a command is about: `NAMESPACE/POD` (optionally one container) or a pid, checked here
//! by the agent's own parser (tracer-parse's `selector`: same rules, same messages) so a typo
//! fails before any call; the agent checks again.

use clap::Args;
use tracer_parse::selector::{Selector, SelectorError, Target};
use tracer_proto::v1 as pb;

/// A pod (or one of its containers), or a process, from the command line.
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// NAMESPACE/POD.
    #[arg(
        value_name = "NAMESPACE/POD",
        required_unless_present = "pid",
        conflicts_with = "pid"
    )]
    pub(crate) pod: Option<String>,
    /// Only this container of the pod.
    #[arg(short = 'c', long)]
    pub(crate) container: Option<String>,
    /// A process by pid instead of a pod.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
}

/// `NAMESPACE/POD`, optionally narrowed to one container.
pub(crate) fn pod(text: &str, container: Option<&str>) -> Result<pb::Selector, SelectorError> {
    Selector::parse_pod(text, container.map(str::to_owned)).map(|s| to_api(&s))
}

/// A process by pid (a container cannot narrow it).
pub(crate) fn pid(pid: u32, container: Option<&str>) -> Result<pb::Selector, SelectorError> {
    Selector::new(Target::Pid(pid), container.map(str::to_owned)).map(|s| to_api(&s))
}

/// A checked selector as the API carries it.
fn to_api(selector: &Selector) -> pb::Selector {
    let target = match &selector.target {
        Target::Pod { namespace, name } => pb::selector::Target::Pod(pb::PodName {
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        Target::PodUid(uid) => pb::selector::Target::PodUid(uid.clone()),
        Target::Pid(pid) => pb::selector::Target::Pid(*pid),
    };
    pb::Selector {
        target: Some(target),
        container: selector.container.clone().unwrap_or_default(),
    }
}

impl TargetArgs {
    /// The selector these arguments name.
    pub(crate) fn selector(&self) -> anyhow::Result<pb::Selector> {
        let container = self.container.as_deref();
        Ok(match (&self.pod, self.pid) {
            (_, Some(number)) => pid(number, container)?,
            (Some(text), None) => pod(text, container)?,
            (None, None) => anyhow::bail!("name a pod (NAMESPACE/POD) or --pid"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(result: Result<pb::Selector, SelectorError>) -> String {
        result.expect_err("must be rejected").to_string()
    }

    #[test]
    fn a_namespace_slash_pod_parses_with_its_container() {
        let selector = pod("shop/api-7.v2", Some("app")).expect("valid");
        assert_eq!(
            selector.target,
            Some(pb::selector::Target::Pod(pb::PodName {
                namespace: "shop".into(),
                name: "api-7.v2".into()
            }))
        );
        assert_eq!(selector.container, "app");
        assert_eq!(pod("shop/api", None).expect("valid").container, "");
    }

    #[test]
    fn malformed_pods_are_rejected_with_the_agents_words() {
        assert_eq!(
            error(pod("shop", None)),
            "invalid selector: \"shop\" is not NAMESPACE/POD"
        );
        assert_eq!(
            error(pod("Shop/api", None)),
            "invalid selector: namespace \"Shop\" is not a Kubernetes name (lowercase letters, \
             digits, '-')"
        );
        assert_eq!(
            error(pod("shop/-api", None)),
            "invalid selector: pod name \"-api\" is not a Kubernetes name (lowercase letters, \
             digits, '-', '.')"
        );
        assert_eq!(
            error(pod("shop/", None)),
            "invalid selector: pod name is empty"
        );
        assert_eq!(
            error(pod("/api", None)),
            "invalid selector: namespace is empty"
        );
        assert_eq!(
            error(pod("shop/api", Some("a_b"))),
            "invalid selector: container \"a_b\" is not a Kubernetes name (lowercase letters, \
             digits, '-')"
        );
        assert_eq!(
            error(pod("shop/api", Some("a.b"))),
            "invalid selector: container \"a.b\" is not a Kubernetes name (lowercase letters, \
             digits, '-')"
        );
        assert_eq!(
            error(pod(&format!("shop/{}", "a".repeat(254)), None)),
            "invalid selector: pod name is longer than 253 characters"
        );
        assert!(pod(&format!("shop/{}", "a".repeat(253)), None).is_ok());
        // The first '/' splits: the rest is the pod name, which cannot hold a '/'.
        assert!(error(pod("shop/api/x", None)).contains("pod name \"api/x\""));
    }

    #[test]
    fn pids_must_be_non_zero_and_cannot_take_a_container() {
        assert_eq!(
            pid(7, None).expect("valid").target,
            Some(pb::selector::Target::Pid(7))
        );
        assert_eq!(
            error(pid(0, None)),
            "invalid selector: pid 0 is not a process"
        );
        assert_eq!(
            error(pid(7, Some("app"))),
            "invalid selector: a container cannot narrow a pid selector"
        );
    }
}
