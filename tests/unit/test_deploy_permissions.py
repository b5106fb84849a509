"""deploy/k8s: every container can use every volume it mounts, under the security context it runs.

The manifests are parsed and the kubelet's ownership rules applied: a Secret or ConfigMap volume's
files are owned by root with ``defaultMode`` (0644 unless set), an emptyDir is 0777, a hostPath
directory (``DirectoryOrCreate``) and a fresh PersistentVolume are root's 0755; with an
``fsGroup`` the kubelet gives them that group and adds group read (0440) to read-only volumes and
group read/write (0660, and search on directories) to writable ones. A container runs as
``runAsUser``/``runAsGroup`` (the container's, else the pod's, else the image's ``USER``), with
the ``fsGroup`` and ``supplementalGroups`` as extra groups. Root is subject to the mode bits when
it drops ``DAC_OVERRIDE`` (``capabilities: {drop: [ALL]}``). A read-only mount needs read (and
search on a directory), a writable one write too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
POD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}
R, W, X = 4, 2, 1


def image_user() -> tuple[int, int]:
    """The ``USER uid:gid`` of deploy/Dockerfile (the s2s image)."""
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "deploy/Dockerfile").read_text(), re.M)
    assert users, "deploy/Dockerfile sets no numeric USER uid:gid"
    return int(users[-1][0]), int(users[-1][1])


@dataclass(frozen=True)
class Node:
    """What a container finds at a mount: a file or a directory, its owner and mode."""

    uid: int
    gid: int
    mode: int
    is_dir: bool


@dataclass(frozen=True)
class Runner:
    uid: int
    gids: frozenset[int]
    dac_override: bool

    def can(self, node: Node, want: int) -> bool:
        if self.uid == 0 and self.dac_override:
            return True
        if self.uid == node.uid:
            bits = (node.mode >> 6) & 7
        elif node.gid in self.gids:
            bits = (node.mode >> 3) & 7
        else:
            bits = node.mode & 7
        return bits & want == want


def volume_node(volume: dict[str, Any], fs_group: int | None, read_only: bool) -> Node:
    if "secret" in volume or "configMap" in volume:
        source = volume.get("secret") or volume.get("configMap") or {}
        mode, is_dir = int(source.get("defaultMode", 0o644)), False
    elif "emptyDir" in volume:
        mode, is_dir = 0o777, True
    elif "hostPath" in volume or "persistentVolumeClaim" in volume or "claim" in volume:
        mode, is_dir = 0o755, True
    else:
        raise AssertionError(f"no permission model for volume {volume}")
    gid = 0
    if fs_group is not None and "hostPath" not in volume:  # the kubelet leaves hostPath alone
        gid = fs_group
        mode |= 0o440 if read_only else 0o660
        if is_dir:
            mode |= 0o110 if read_only else 0o770
    return Node(0, gid, mode, is_dir)


def runner(pod: dict[str, Any], container: dict[str, Any]) -> Runner:
    pod_ctx = pod.get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    default_uid, default_gid = image_user() if container["image"].startswith("s2s:") else (0, 0)
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser", default_uid))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", default_gid))
    gids = {gid, *pod_ctx.get("supplementalGroups", [])}
    if "fsGroup" in pod_ctx:
        gids.add(pod_ctx["fsGroup"])
    caps = ctx.get("capabilities") or {}
    dropped = {c.upper() for c in caps.get("drop", [])}
    added = {c.upper() for c in caps.get("add", [])}
    keeps = "DAC_OVERRIDE" in added or not ({"ALL", "DAC_OVERRIDE"} & dropped)
    return Runner(uid, frozenset(gids), keeps)


def pods() -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(where, pod spec, volumes including claim templates) of every pod template in deploy/k8s."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") not in POD_KINDS:
                continue
            spec = doc["spec"]["template"]["spec"]
            volumes = list(spec.get("volumes", []))
            for claim in doc["spec"].get("volumeClaimTemplates", []):
                volumes.append({"name": claim["metadata"]["name"], "claim": True})
            found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", spec, volumes))
    return found


def problems(where: str, pod: dict[str, Any], volumes: list[dict[str, Any]]) -> list[str]:
    by_name = {v["name"]: v for v in volumes}
    fs_group = (pod.get("securityContext") or {}).get("fsGroup")
    out = []
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        who = runner(pod, container)
        for mount in container.get("volumeMounts", []):
            read_only = bool(mount.get("readOnly"))
            node = volume_node(by_name[mount["name"]], fs_group, read_only)
            want = R if read_only else R | W
            if node.is_dir:
                want |= X
            if not who.can(node, want):
                out.append(
                    f"{where} container {container['name']} (uid {who.uid}, groups "
                    f"{sorted(who.gids)}) cannot {'read' if read_only else 'write'} "
                    f"{mount['mountPath']} (owner 0:{node.gid}, mode {node.mode:04o})"
                )
    return out


def test_every_container_can_use_its_mounts() -> None:
    found = pods()
    assert {where.split(":")[0] for where, _, _ in found} >= {
        "ca.yaml", "agent.yaml", "etcd.yaml", "workload.yaml"
    }  # fmt: skip
    issues = [p for where, pod, volumes in found for p in problems(where, pod, volumes)]
    assert not issues, "\n".join(issues)


def test_the_kek_init_containers_read_the_secret_as_the_ca_user() -> None:
    """The CA's KEK Secret is read by its init containers, which run as the CA's user."""
    ca_pods = [(w, p, v) for w, p, v in pods() if w.startswith("ca.yaml")]
    assert len(ca_pods) == 2  # the init Job and the Deployment
    for where, pod, volumes in ca_pods:
        (kek,) = [c for c in pod["initContainers"] if c["name"] == "kek"]
        assert runner(pod, kek).uid == image_user()[0] != 0, where
        assert not problems(where, pod, volumes)


@pytest.mark.parametrize(
    ("pod_ctx", "mode", "ok"),
    [
        ({"runAsUser": 10001, "runAsGroup": 10001}, 0o400, False),  # the bug: root's 0400 file
        ({"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}, 0o400, True),
        ({"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}, 0o440, True),
        ({"runAsUser": 10001, "runAsGroup": 0}, 0o400, False),  # group root, no group bits
        ({"runAsUser": 10001, "runAsGroup": 0}, 0o440, True),
        ({"runAsUser": 0}, 0o400, True),  # root reads its own 0400 file even without DAC caps
        ({"runAsUser": 0}, 0o040, False),  # ... but not one only its group may read
    ],
)
def test_the_model_refuses_what_the_kubelet_would(
    pod_ctx: dict[str, Any], mode: int, ok: bool
) -> None:
    pod = {
        "securityContext": pod_ctx,
        "containers": [
            {
                "name": "c",
                "image": "s2s:dev",
                "securityContext": {"capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "s", "mountPath": "/s", "readOnly": True}],
            }
        ],
    }
    volumes = [{"name": "s", "secret": {"secretName": "x", "defaultMode": mode}}]
    assert (not problems("t", pod, volumes)) is ok
