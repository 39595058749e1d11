//! Which container a process runs in, read from its cgroup v2 path: the
//! path itself, and where the path carries them, the container runtime,
//! the container id and the Kubernetes pod UID.
//!
//! Runtimes name the cgroup they make for a container after it, in a few
//! forms (all seen on real hosts):
//!
//! - systemd driver: `…/docker-<id>.scope`, `…/libpod-<id>.scope` (podman,
//!   also rootless under `user@UID.service`, and `…/libpod-<id>.scope/container`
//!   when the container has its own cgroup namespace), `…/cri-containerd-<id>.scope`,
//!   `…/crio-<id>.scope`; Kubernetes puts them under
//!   `kubepods-<qos>-pod<uid with _ for ->.slice`;
//! - cgroupfs driver: `/docker/<id>`, `/kubepods/<qos>/pod<uid>/<id>`;
//! - containerd's systemd form seen through cgroupfs:
//!   `…/kubepods-<qos>-pod<uid>.slice:cri-containerd:<id>`.
//!
//! Only 64-hex-digit ids and 36-character UUIDs are taken, so a component
//! that merely looks similar yields no id. The labels are what the path
//! says: a process that can create cgroups (a delegated subtree) can name
//! one as it likes, so they identify, they do not authenticate.
//!
//! Parsing is pure and unit-tested on those forms; [`of_process`] reads
//! `/proc/PID/cgroup` through procfs.

use serde::Serialize;

/// A process's container identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Container {
    /// The cgroup path, as `/proc/PID/cgroup` shows it: the v2 one (`0::PATH`),
    /// or on a hybrid host the v1 one that names the container.
    pub cgroup: String,
    /// `docker`, `podman`, `containerd` or `cri-o`, when the path names it.
    pub runtime: Option<&'static str>,
    /// The container id (64 hex digits).
    pub id: Option<String>,
    /// The Kubernetes pod UID (with dashes, as `kubectl get pod -o yaml`
    /// shows `metadata.uid`).
    pub pod_uid: Option<String>,
}

/// Runtime by the prefix its systemd scope carries; longest first so that
/// `crio-conmon-` (the monitor, not the container) is not read as `crio-`.
const SCOPE_PREFIXES: &[(&str, Option<&str>)] = &[
    ("libpod-conmon-", None),
    ("crio-conmon-", None),
    ("cri-containerd-", Some("containerd")),
    ("docker-", Some("docker")),
    ("libpod-", Some("podman")),
    ("crio-", Some("cri-o")),
];

/// The identity the cgroup v2 path `cgroup` carries.
pub fn parse(cgroup: &str) -> Container {
    let components: Vec<&str> = cgroup
        .split('/')
        .filter(|component| !component.is_empty())
        .collect();
    let (runtime, id) = components
        .iter()
        .enumerate()
        .rev()
        .find_map(|(index, component)| {
            let parent = index.checked_sub(1).map(|parent| components[parent]);
            container_in(component, parent)
        })
        .map_or((None, None), |(runtime, id)| (runtime, Some(id)));
    let pod_uid = components
        .iter()
        .rev()
        .find_map(|component| pod_in(component));
    Container {
        cgroup: cgroup.to_owned(),
        runtime,
        id,
        pod_uid,
    }
}

/// The identity of `pid`, or None when it is gone. The cgroup v2 path comes
/// first; on a hybrid host (v1 controllers beside an empty v2 tree) the
/// runtimes name the container in the v1 hierarchies, so the first of
/// those that names one is taken instead.
pub fn of_process(pid: u32) -> Option<Container> {
    let cgroups = procfs::process::Process::new(pid as i32)
        .and_then(|process| process.cgroups())
        .ok()?;
    let (unified, v1): (Vec<_>, Vec<_>) = cgroups
        .into_iter()
        .map(|cgroup| (cgroup.hierarchy == 0, parse(&cgroup.pathname)))
        .partition(|(unified, _)| *unified);
    let mut parsed = unified
        .into_iter()
        .chain(v1)
        .map(|(_, container)| container);
    let first = parsed.next()?;
    if first.id.is_some() || first.pod_uid.is_some() {
        return Some(first);
    }
    Some(
        parsed
            .find(|container| container.id.is_some() || container.pod_uid.is_some())
            .unwrap_or(first),
    )
}

/// A container's runtime and id in one path component; `parent` is the
/// component above it (`docker` for the cgroupfs driver's `/docker/<id>`).
fn container_in(component: &str, parent: Option<&str>) -> Option<(Option<&'static str>, String)> {
    // `kubepods-…-pod<uid>.slice:cri-containerd:<id>`
    if let Some((_, rest)) = component.split_once(':') {
        let (prefix, id) = rest.split_once(':')?;
        let runtime = SCOPE_PREFIXES
            .iter()
            .find(|(known, _)| known.strip_suffix('-') == Some(prefix))
            .and_then(|(_, runtime)| *runtime);
        return is_container_id(id).then(|| (runtime, id.to_owned()));
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    for &(prefix, runtime) in SCOPE_PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            // A monitor (conmon) scope is not the container.
            return runtime
                .filter(|_| is_container_id(id))
                .map(|runtime| (Some(runtime), id.to_owned()));
        }
    }
    if !is_container_id(component) {
        return None;
    }
    let runtime = match parent {
        Some("docker") => Some("docker"),
        Some("libpod_parent") => Some("podman"),
        _ => None,
    };
    Some((runtime, component.to_owned()))
}

/// The pod UID in `kubepods-burstable-pod<uid>.slice` (systemd driver,
/// `_` for `-`) or `pod<uid>` (cgroupfs driver).
fn pod_in(component: &str) -> Option<String> {
    // The slice may carry a `:runtime:id` tail (see `container_in`).
    let name = component.split(':').next()?;
    let name = name.strip_suffix(".slice").unwrap_or(name);
    let (_, uid) = name.rsplit_once("pod")?;
    let uid = uid.replace('_', "-");
    let prefix_ok = name.starts_with("kubepods") || name == format!("pod{uid}");
    (prefix_ok && is_uuid(&uid)).then_some(uid)
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|group| group.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|group| group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c2e5a9b1f3d8e7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29180716f5e4d3c2b1a0";
    const POD: &str = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";

    fn identity(cgroup: &str) -> (Option<&'static str>, Option<String>, Option<String>) {
        let parsed = parse(cgroup);
        assert_eq!(parsed.cgroup, cgroup);
        (parsed.runtime, parsed.id, parsed.pod_uid)
    }

    fn container(runtime: &'static str) -> (Option<&'static str>, Option<String>, Option<String>) {
        (Some(runtime), Some(ID.to_owned()), None)
    }

    #[test]
    fn docker_under_systemd_and_cgroupfs() {
        let systemd = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(identity(&systemd), container("docker"));
        assert_eq!(identity(&format!("/docker/{ID}")), container("docker"));
    }

    #[test]
    fn podman_rootful_rootless_and_with_its_own_cgroup_namespace() {
        let rootful = format!("/machine.slice/libpod-{ID}.scope");
        let rootless =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        let nested = format!("/machine.slice/libpod-{ID}.scope/container");
        for path in [rootful, rootless, nested] {
            assert_eq!(identity(&path), container("podman"), "{path}");
        }
        assert_eq!(
            identity(&format!("/libpod_parent/{ID}")),
            container("podman")
        );
    }

    #[test]
    fn conmon_is_not_the_container() {
        let conmon = format!("/machine.slice/libpod-conmon-{ID}.scope");
        assert_eq!(identity(&conmon), (None, None, None));
        let crio = format!("/kubepods.slice/crio-conmon-{ID}.scope");
        assert_eq!(identity(&crio), (None, None, None));
    }

    #[test]
    fn kubernetes_pods_with_containerd_and_cri_o() {
        let underscored = POD.replace('-', "_");
        let containerd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            identity(&containerd),
            (
                Some("containerd"),
                Some(ID.to_owned()),
                Some(POD.to_owned())
            )
        );
        let crio = format!("/kubepods.slice/kubepods-pod{underscored}.slice/crio-{ID}.scope");
        assert_eq!(
            identity(&crio),
            (Some("cri-o"), Some(ID.to_owned()), Some(POD.to_owned()))
        );
    }

    #[test]
    fn kubernetes_with_the_cgroupfs_driver_and_the_colon_form() {
        let cgroupfs = format!("/kubepods/besteffort/pod{POD}/{ID}");
        assert_eq!(
            identity(&cgroupfs),
            (None, Some(ID.to_owned()), Some(POD.to_owned()))
        );
        let underscored = POD.replace('-', "_");
        let colon = format!(
            "/system.slice/containerd.service/kubepods-besteffort-pod{underscored}.slice:cri-containerd:{ID}"
        );
        assert_eq!(
            identity(&colon),
            (
                Some("containerd"),
                Some(ID.to_owned()),
                Some(POD.to_owned())
            )
        );
    }

    #[test]
    fn a_pod_cgroup_without_a_container_still_names_the_pod() {
        // The pod's pause-less parent, where the kubelet itself accounts.
        let pod = format!("/kubepods/burstable/pod{POD}");
        assert_eq!(identity(&pod), (None, None, Some(POD.to_owned())));
    }

    #[test]
    fn host_services_and_lookalikes_carry_no_identity() {
        for path in [
            "/",
            "/init.scope",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/docker.service",
            "/system.slice/docker-notanid.scope",
            "/kubepods.slice/kubepods-burstable.slice",
            "/podcast/episode",
            "/system.slice/ipod-sync.service",
        ] {
            assert_eq!(identity(path), (None, None, None), "{path}");
        }
        // 63 hex digits are not an id.
        assert_eq!(
            identity(&format!("/docker/{}", &ID[1..])),
            (None, None, None)
        );
    }
}
