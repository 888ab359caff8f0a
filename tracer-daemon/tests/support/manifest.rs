//! The deployment manifests as an SRE installs them: `kubectl kustomize` renders a directory
//! under deploy/, `kubernetes-validate` checks a render against the Kubernetes schema, and
//! k8s-openapi reads it back typed, refusing any field it does not know.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    Resource,
    api::{apps::v1::DaemonSet, core::v1::Container},
    apimachinery::pkg::api::resource::Quantity,
};
use serde::{Deserialize as _, de::DeserializeOwned};

/// The directory `kubectl apply -k` installs from.
pub(crate) const INSTALL: &str = "deploy";

/// The Kubernetes version whose schema the manifests must pass (the oldest supported).
pub(crate) const KUBERNETES_VERSION: &str = "1.32.0";

/// The workspace's root directory.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the daemon crate sits in the workspace")
        .to_path_buf()
}

/// `kubectl kustomize <workspace>/<dir>`: the YAML an SRE would apply.
pub(crate) fn render(dir: &str) -> String {
    let path = workspace_root().join(dir);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl (`cargo xtask setup` installs it): {e}"));
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed ({}):\n{}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
}

/// The documents of a multi-document YAML stream, untyped.
pub(crate) fn documents(yaml: &str) -> Vec<serde_norway::Value> {
    serde_norway::Deserializer::from_str(yaml)
        .enumerate()
        .map(|(index, document)| {
            serde_norway::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("document {index} is not YAML: {e}"))
        })
        .filter(|document| !document.is_null())
        .collect()
}

/// `T` from one document. A field `T` does not know is an error naming its path, as is a
/// value of the wrong type.
pub(crate) fn strict<T: DeserializeOwned>(document: serde_norway::Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(dotted(&path));
    let result: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(document, &mut record));
    let value = result.map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    if unknown.is_empty() {
        Ok(value)
    } else {
        Err(format!("unknown fields: {}", unknown.join(", ")))
    }
}

/// A path as the Kubernetes docs and kubernetes-validate write it: `spec.containers.0.name`
/// (serde_ignored's own form also marks every `Option` with `?`).
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    let join = |parent: &Path<'_>, child: &dyn std::fmt::Display| match dotted(parent) {
        root if root.is_empty() => child.to_string(),
        parent => format!("{parent}.{child}"),
    };
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join(parent, index),
        Path::Map { parent, key } => join(parent, key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
}

/// The one object of type `T` in a render, read strictly.
pub(crate) fn try_object<T: Resource + DeserializeOwned>(rendered: &str) -> Result<T, String> {
    let mut matching: Vec<serde_norway::Value> = documents(rendered)
        .into_iter()
        .filter(|document| {
            document["kind"].as_str() == Some(T::KIND)
                && document["apiVersion"].as_str() == Some(T::API_VERSION)
        })
        .collect();
    match matching.len() {
        1 => strict(matching.remove(0)).map_err(|e| format!("{} {}: {e}", T::API_VERSION, T::KIND)),
        n => Err(format!(
            "expected one {} {}, found {n}",
            T::API_VERSION,
            T::KIND
        )),
    }
}

/// Like [`try_object`], failing the test with the reason.
pub(crate) fn object<T: Resource + DeserializeOwned>(rendered: &str) -> T {
    try_object(rendered).unwrap_or_else(|e| panic!("{e}"))
}

/// The DaemonSet of a render, refusing unknown fields.
pub(crate) fn try_daemonset(rendered: &str) -> Result<DaemonSet, String> {
    try_object(rendered)
}

/// The typed DaemonSet from a multi-document render; fails on any unknown field.
pub(crate) fn daemonset(rendered: &str) -> DaemonSet {
    object(rendered)
}

/// The agent's container (`tracer`) of a DaemonSet.
pub(crate) fn tracer_container(daemonset: &DaemonSet) -> &Container {
    daemonset
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .and_then(|pod| pod.containers.iter().find(|c| c.name == "tracer"))
        .expect("the DaemonSet has a container named tracer")
}

/// The capabilities the installed agent adds (after dropping all): what the least-privilege
/// test runs the daemon with.
pub(crate) fn capabilities() -> Vec<String> {
    capabilities_of(INSTALL)
}

/// The capabilities the agent adds as the kustomization in `dir` renders it.
pub(crate) fn capabilities_of(dir: &str) -> Vec<String> {
    let daemonset = daemonset(&render(dir));
    tracer_container(&daemonset)
        .security_context
        .as_ref()
        .and_then(|context| context.capabilities.as_ref())
        .and_then(|capabilities| capabilities.add.clone())
        .expect("container tracer adds capabilities")
}

/// The value of `--name=VALUE` or `--name VALUE` in an argument list.
pub(crate) fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let long = format!("--{name}");
    args.iter().enumerate().find_map(|(index, arg)| {
        if arg == &long {
            args.get(index + 1).map(String::as_str)
        } else {
            arg.strip_prefix(&long)?.strip_prefix('=')
        }
    })
}

/// Bytes of a memory quantity such as `128Mi` or `1G`.
pub(crate) fn quantity_bytes(quantity: &Quantity) -> u64 {
    let text = quantity.0.as_str();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("quantity {text:?} is not a whole number with a suffix"));
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => panic!("quantity {text:?}: unexpected suffix {suffix:?}"),
    };
    number * unit
}

/// The validator `cargo xtask setup` installs in the tests' virtualenv.
fn kubernetes_validate() -> PathBuf {
    let path = workspace_root().join("target/pyenv/bin/kubernetes-validate");
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup` (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// `kubernetes-validate --strict` against [`KUBERNETES_VERSION`] on a YAML stream: `Ok` with
/// its report when every resource passes, `Err` with it otherwise. Unknown fields and wrong
/// types fail; enum values and capability names are not checked.
pub(crate) fn validate(label: &str, yaml: &str) -> Result<String, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests");
    std::fs::create_dir_all(&dir).expect("create the manifests temp dir");
    let file = dir.join(format!(
        "{}-{}.yaml",
        label.replace(['/', ' '], "_"),
        std::process::id()
    ));
    std::fs::write(&file, yaml).expect("write the manifest to validate");
    validate_file(&file)
}

/// [`validate`] on a file.
pub(crate) fn validate_file(file: &Path) -> Result<String, String> {
    let output = Command::new(kubernetes_validate())
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}
