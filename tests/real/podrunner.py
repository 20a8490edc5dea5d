"""A process kubelet: runs a Pod (as Tekton's controller made it, JSON) on this machine, container by container.

What it does as a kubelet does, because Tekton's entrypoint and step-tracer depend on it:
- init containers in order, each to completion; then all containers at once. Init containers with
  `restartPolicy: Always` are native sidecars: started in order, left running, stopped after the containers;
- volumes: emptyDir (a directory, 0777), persistentVolumeClaim (a test's directory, shared across pods),
  downwardAPI (the kubelet's atomic writer layout and `key="value"` format), secret / configMap / projected
  from maps the test gives; each bind-mounted at its `mountPath` inside the container's own mount namespace
  (`container.py`), read-only where asked, `subPath` honoured;
- env: `value`, `fieldRef`, `secretKeyRef`/`configMapKeyRef`, `envFrom`, `$(VAR)` expansion in env, command and
  args; the image's Env, Entrypoint, Cmd and WorkingDir; `runAsUser`/`runAsGroup` (container over pod over image);
- probes: exec probes run inside the container (nsenter); a startup probe holds back the next init container
  after a native sidecar until it passes; readiness with periodSeconds, initialDelaySeconds and
  failureThreshold; a container without a readiness probe is ready once it runs;
- termination: the exit code (128+N for a signal), reason `Completed`/`Error`/`StartError`, the message from the
  file bound at `terminationMessagePath` (4096 bytes at most; `FallbackToLogsOnError` uses the log's tail);
- at the end of a pod, and on `delete()`: SIGTERM to each running container's PID 1, SIGKILL after
  `terminationGracePeriodSeconds`.
What the controller does meanwhile, the runner does as Tekton's controller does (`tekton_moves`, the default):
once every non-step container is ready (`SidecarsReady`), the pod's `tekton.dev/ready` annotation is set (the
first step waits on its Downward API file); once every step has ended, sidecars are stopped (Tekton's
StopSidecars swaps their image for nop, which makes the kubelet kill them with the grace period). With
`tekton_moves=False` Tekton's real controller makes those moves through the API server, and the node
(`node.py`) hands the changed pod to `update()`: new labels and annotations rewrite the Downward API volumes, a
changed image restarts that container from the new image, as the kubelet does.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.real.kubelet import expand, field_value, format_map, write_volume

CONTAINER_INIT = Path(__file__).with_name("container.py")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_ANNOTATION = "tekton.dev/ready"
READY_VALUE = "READY"
MAX_MESSAGE = 4096
POLL = 0.02


@dataclass
class Image:
    """A local image: a root filesystem and the parts of its config a runtime uses."""

    root: Path
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    workdir: str = "/"
    user: int = 0
    #: host path -> path inside, read-only: tools a test lends the image without copying them in.
    binds: dict[str, str] = field(default_factory=dict)


@dataclass
class ContainerStatus:
    name: str
    image: str
    init: bool
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    ready: bool = False
    restart_count: int = 0
    stdout: str = ""
    stderr: str = ""

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.exit_code is None

    def as_k8s(self) -> dict[str, Any]:
        if self.exit_code is not None:
            state: dict[str, Any] = {
                "terminated": {
                    "exitCode": self.exit_code,
                    "reason": self.reason,
                    "startedAt": _rfc3339(self.started_at),
                    "finishedAt": _rfc3339(self.finished_at),
                    **({"message": self.message} if self.message else {}),
                }
            }
        elif self.started_at is not None:
            state = {"running": {"startedAt": _rfc3339(self.started_at)}}
        else:
            state = {"waiting": {"reason": "PodInitializing"}}
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.running,
            "state": state,
        }


def _rfc3339(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


class PodError(Exception):
    """The pod cannot be run here (an unknown volume type, image, ...)."""


class _Container:
    """One running container: its container.py process, its files on the host, its probe state."""

    def __init__(self, runner: PodRunner, spec: Mapping[str, Any], init: bool, attempt: int = 0) -> None:
        self.runner = runner
        self.spec = spec
        self.name: str = spec["name"]
        self.dir = runner.workdir / "containers" / (self.name + (f".{attempt}" if attempt else ""))
        self.dir.mkdir(parents=True)
        self.status = ContainerStatus(self.name, spec.get("image", ""), init, restart_count=attempt)
        self.last_state: ContainerStatus | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.env: dict[str, str] = {}
        self.uid = self.gid = 0
        probe = spec.get("readinessProbe")
        self.probe: Mapping[str, Any] | None = probe
        self.next_probe = 0.0
        self.probe_failures = 0

    @property
    def native_sidecar(self) -> bool:
        return self.status.init and self.spec.get("restartPolicy") == "Always"

    def start(self) -> None:
        r = self.runner
        image = r.image_for(self.spec.get("image", ""))
        env, declared = r.container_env(self.spec, image)
        self.env = env
        # Command and args expand against the variables the pod declares, not the image's, as the kubelet does.
        command = [expand(a, declared) for a in self.spec.get("command") or []]
        args = [expand(a, declared) for a in self.spec.get("args") or []]
        if command:
            argv = command + args
        else:
            argv = list(image.entrypoint) + (args if args or "args" in self.spec else list(image.cmd))
        if not argv:
            raise PodError(f"container {self.name}: no command and the image has no entrypoint")
        self.uid, self.gid = r.user_of(self.spec, image)
        termination = self.dir / "termination-log"
        termination.touch()
        termination.chmod(0o666)
        mounts = r.mounts_for(self.spec, image)
        mounts.append(
            {
                "source": str(termination),
                "target": self.spec.get("terminationMessagePath") or "/dev/termination-log",
                "readonly": False,
                "file": True,
            }
        )
        spec = {
            "rootfs": str(image.root),
            "scratch": str(self.dir / "fs"),
            "mounts": mounts,
            "env": sorted(env.items()),
            "argv": argv,
            "cwd": self.spec.get("workingDir") or image.workdir,
            "uid": self.uid,
            "gid": self.gid,
            "groups": r.supplemental_groups(),
            "hostname": r.pod["metadata"]["name"][:63],
            "pidfile": str(self.dir / "pid"),
        }
        (self.dir / "spec.json").write_text(json.dumps(spec))
        out = open(self.dir / "stdout", "wb")  # noqa: SIM115 - closed in reap()
        err = open(self.dir / "stderr", "wb")  # noqa: SIM115
        self._files = (out, err)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(CONTAINER_INIT), str(self.dir / "spec.json")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        self.status.started_at = time.time()
        pidfile = self.dir / "pid"
        while not pidfile.exists() and self.proc.poll() is None:
            time.sleep(0.005)
        if pidfile.exists():
            self.pid = int(pidfile.read_text())
        if self.probe is None:
            self.status.ready = True
        else:
            self.next_probe = time.monotonic() + float(self.probe.get("initialDelaySeconds", 0))

    def signal(self, sig: int) -> None:
        if self.pid is not None and self.status.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def poll(self) -> bool:
        """True once the container has ended (and its status is filled in)."""
        if self.status.exit_code is not None:
            return True
        if self.proc is None or self.proc.poll() is None:
            return False
        self.reap()
        return True

    def reap(self) -> None:
        """Fill in the ended container's status. The exit code is set last: it is what makes the status say
        `terminated`, and the node reports statuses from another thread while this runs, so a reader never sees
        a terminated container without its reason and message (as the kubelet reports them together)."""
        assert self.proc is not None
        code = self.proc.wait()
        for f in self._files:
            f.close()
        s = self.status
        s.finished_at = time.time()
        s.ready = False
        s.stdout = (self.dir / "stdout").read_bytes().decode("utf-8", "replace")
        s.stderr = (self.dir / "stderr").read_bytes().decode("utf-8", "replace")
        start_failed = self.pid is None or s.stderr.startswith("container start failed:")
        s.reason = "StartError" if start_failed and code == 128 else ("Completed" if code == 0 else "Error")
        message = (self.dir / "termination-log").read_bytes()[:MAX_MESSAGE].decode("utf-8", "replace")
        if not message and code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            log = (s.stdout + s.stderr).splitlines()[-80:]
            message = "\n".join(log)[-2048:]
        s.message = message
        s.exit_code = code

    def _exec_probe(self, probe: Mapping[str, Any]) -> bool:
        """One run of an exec probe inside the container (the pods here use exec probes only)."""
        command = (probe.get("exec") or {}).get("command")
        if not command or self.pid is None:
            raise PodError(f"container {self.name}: only exec probes are supported")
        enter = ["nsenter", "-t", str(self.pid), "-m", "-p", "-r", "-w", "-S", str(self.uid), "-G", str(self.gid)]
        try:
            return (
                subprocess.run(
                    [*enter, "--", *command],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=float(probe.get("timeoutSeconds", 1)),
                    check=False,
                ).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def wait_started(self, deadline: float) -> None:
        """The kubelet's `started`: a container with a startup probe has started once the probe passes (it then
        starts the next init container after a native sidecar, and begins readiness probes)."""
        probe = self.spec.get("startupProbe")
        if probe is None:
            return
        time.sleep(float(probe.get("initialDelaySeconds", 0)))
        failures = 0
        while not self._exec_probe(probe):
            failures += 1
            if self.poll() or failures >= int(probe.get("failureThreshold", 3)) or time.monotonic() > deadline:
                raise PodError(f"container {self.name}: startup probe failed {failures} times")
            time.sleep(float(probe.get("periodSeconds", 10)))

    def maybe_probe(self) -> None:
        """Run the readiness probe when it is due."""
        if self.probe is None or not self.status.running or time.monotonic() < self.next_probe:
            return
        self.next_probe = time.monotonic() + float(self.probe.get("periodSeconds", 10))
        if self._exec_probe(self.probe):
            self.probe_failures = 0
            self.status.ready = True
        else:
            self.probe_failures += 1
            if self.probe_failures >= int(self.probe.get("failureThreshold", 3)):
                self.status.ready = False


class PodRunner:
    """Runs one pod to its end. `run()` blocks; `delete()` (from another thread) deletes the pod meanwhile."""

    def __init__(
        self,
        pod: Mapping[str, Any],
        images: Mapping[str, Image],
        workdir: Path,
        *,
        default_image: Image | None = None,
        node_name: str = "step-tracer-node",
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        config_maps: Mapping[str, Mapping[str, str]] | None = None,
        grace_seconds: float | None = None,
        nop_image: str = "tekton/nop",
        claims: Mapping[str, Path] | None = None,
        tekton_moves: bool = True,
        service_env: Mapping[str, str] | None = None,
        tokens: Callable[[Mapping[str, Any]], str] | None = None,
    ) -> None:
        self.nop_image = nop_image
        self.tekton_moves = tekton_moves
        #: KUBERNETES_SERVICE_HOST/PORT..., which the kubelet gives every container.
        self.service_env = dict(service_env or {})
        #: a projected serviceAccountToken source -> a token (the kubelet's TokenRequest); None: no API server.
        self.tokens = tokens
        self._updates: queue.Queue[dict[str, Any]] = queue.Queue()
        self.claims = claims or {}
        self.pod: dict[str, Any] = json.loads(json.dumps(pod))
        self.pod.setdefault("spec", {})["nodeName"] = node_name
        self.pod["metadata"].setdefault("annotations", {})
        self.pod["metadata"].setdefault("labels", {})
        self.images = images
        self.default_image = default_image
        self.workdir = workdir
        self.secrets = secrets or {}
        self.config_maps = config_maps or {}
        spec = self.pod["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        self.grace = float(grace if grace_seconds is None else grace_seconds)
        self.phase = "Pending"
        self.started_at: float | None = None
        self._deleted = threading.Event()
        self._volumes: dict[str, Path] = {}
        self.init_containers = [_Container(self, c, True) for c in spec.get("initContainers") or []]
        self.containers = [_Container(self, c, False) for c in spec.get("containers") or []]

    # --- what the pod is made of -------------------------------------------------------------------------

    def image_for(self, name: str) -> Image:
        bare = name.split("@")[0]
        if ":" in bare.rsplit("/", 1)[-1]:
            bare = bare.rsplit(":", 1)[0]
        image = self.images.get(name) or self.images.get(bare) or self.default_image
        if image is None:
            raise PodError(f"no local image for {name!r}")
        return image

    @property
    def meta(self) -> dict[str, object]:
        m = self.pod["metadata"]
        return {
            "name": m.get("name", ""),
            "namespace": m.get("namespace", ""),
            "uid": m.get("uid", ""),
            "labels": m.get("labels") or {},
            "annotations": m.get("annotations") or {},
            "nodeName": self.pod["spec"].get("nodeName", ""),
            "serviceAccountName": self.pod["spec"].get("serviceAccountName", "default"),
            "podIP": "127.0.0.1",
            "hostIP": "127.0.0.1",
        }

    def container_env(self, c: Mapping[str, Any], image: Image) -> tuple[dict[str, str], dict[str, str]]:
        """(the process environment, the variables the pod declares): the image's Env, then envFrom, then env
        with `$(VAR)` expansion."""
        declared: dict[str, str] = {}
        for source in c.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for key, ref in (("secretRef", self.secrets), ("configMapRef", self.config_maps)):
                if key in source:
                    data = ref.get(source[key]["name"])
                    if data is None and not source[key].get("optional"):
                        raise PodError(f"container {c['name']}: {key} {source[key]['name']} not found")
                    for k, v in (data or {}).items():
                        declared[prefix + k] = v
        for var in c.get("env") or []:
            if "value" in var or "valueFrom" not in var:
                declared[var["name"]] = expand(var.get("value", ""), declared)
                continue
            value = self._value_from(c, var["valueFrom"])
            if value is not None:
                declared[var["name"]] = value
        env = dict(image.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env["HOSTNAME"] = self.pod["metadata"]["name"][:63]
        env.update(self.service_env)
        env.update(declared)
        env.setdefault("HOME", "/root" if self.user_of(c, image)[0] == 0 else "/")
        return env, declared

    def _value_from(self, c: Mapping[str, Any], source: Mapping[str, Any]) -> str | None:
        if "fieldRef" in source:
            return field_value(source["fieldRef"]["fieldPath"], self.meta)
        for key, ref in (("secretKeyRef", self.secrets), ("configMapKeyRef", self.config_maps)):
            if key in source:
                sel = source[key]
                value = (ref.get(sel["name"]) or {}).get(sel["key"])
                if value is None and not sel.get("optional"):
                    raise PodError(f"container {c['name']}: {key} {sel['name']}/{sel['key']} not found")
                return value
        if "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]
            kind, _, name = resource.partition(".")
            value = ((c.get("resources") or {}).get(kind) or {}).get(name)
            return str(value) if value is not None else "0"
        raise PodError(f"container {c['name']}: unsupported valueFrom {sorted(source)}")

    def user_of(self, c: Mapping[str, Any], image: Image) -> tuple[int, int]:
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = c.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser", image.user))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", 0))
        return int(uid), int(gid)

    def supplemental_groups(self) -> list[int]:
        pod_sc = self.pod["spec"].get("securityContext") or {}
        groups = list(pod_sc.get("supplementalGroups") or [])
        if "fsGroup" in pod_sc:
            groups.append(pod_sc["fsGroup"])
        return [int(g) for g in groups]

    def mounts_for(self, c: Mapping[str, Any], image: Image) -> list[dict[str, Any]]:
        mounts: list[dict[str, Any]] = [
            {"source": host, "target": inside, "readonly": True, "file": os.path.isfile(host)}
            for host, inside in image.binds.items()
        ]
        for m in c.get("volumeMounts") or []:
            source = self._volume_dir(m["name"])
            if m.get("subPath"):
                source = source / m["subPath"]
                if not source.exists():
                    source.mkdir(parents=True, mode=0o777)
            mounts.append(
                {
                    "source": str(source),
                    "target": m["mountPath"],
                    "readonly": bool(m.get("readOnly")),
                    "file": source.is_file(),
                }
            )
        return mounts

    def _volume_dir(self, name: str) -> Path:
        if name not in self._volumes:
            raise PodError(f"volume {name!r} is mounted but not declared")
        return self._volumes[name]

    def _make_volumes(self) -> None:
        for v in self.pod["spec"].get("volumes") or []:
            path = self.workdir / "volumes" / v["name"]
            path.mkdir(parents=True)
            if "emptyDir" in v:
                path.chmod(0o777)
            elif "persistentVolumeClaim" in v:
                # A claim is one directory, shared by every pod that mounts it (a volume that outlives the pod).
                claim = self.claims.get(v["persistentVolumeClaim"]["claimName"])
                if claim is not None:
                    path.rmdir()
                    path = claim
                path.chmod(0o777)
            elif "downwardAPI" in v or "secret" in v or "configMap" in v or "projected" in v:
                write_volume(path, self._volume_files(v), 0o644)
            else:
                raise PodError(f"volume {v['name']}: unsupported type {sorted(k for k in v if k != 'name')}")
            self._volumes[v["name"]] = path

    def _volume_files(self, v: Mapping[str, Any]) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        sources = v["projected"]["sources"] if "projected" in v else [v]
        for s in sources:
            if "downwardAPI" in s:
                for item in s["downwardAPI"].get("items") or []:
                    if "fieldRef" not in item:
                        raise PodError(f"volume {v.get('name')}: only fieldRef downward API items are supported")
                    files[item["path"]] = field_value(item["fieldRef"]["fieldPath"], self.meta).encode()
            for key, ref, name_key in (("secret", self.secrets, "secretName"), ("configMap", self.config_maps, "name")):
                if key in s:
                    data = ref.get(s[key].get(name_key, ""))
                    if data is None:
                        if s[key].get("optional"):
                            continue
                        raise PodError(f"volume {v.get('name')}: {key} {s[key].get(name_key)} not found")
                    items = s[key].get("items")
                    pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
                    for k, p in pairs:
                        files[p] = data[k].encode()
            if "serviceAccountToken" in s and self.tokens is not None:
                files[s["serviceAccountToken"]["path"]] = self.tokens(s["serviceAccountToken"]).encode()
        return files

    def _refresh_downward(self) -> None:
        """The kubelet rewrites Downward API volumes when the pod's metadata changes."""
        for v in self.pod["spec"].get("volumes") or []:
            if "downwardAPI" in v or "projected" in v:
                write_volume(self._volumes[v["name"]], self._volume_files(v), 0o644)

    # --- running it ------------------------------------------------------------------------------------------

    def delete(self) -> None:
        """Delete the pod (a TaskRun cancelled or timed out): every running container gets SIGTERM, then SIGKILL."""
        self._deleted.set()

    @property
    def deleted(self) -> bool:
        return self._deleted.is_set()

    def update(self, pod: Mapping[str, Any]) -> None:
        """The pod as the API server now holds it (another thread's watch): applied by the run loop."""
        self._updates.put(json.loads(json.dumps(pod)))

    def _apply_updates(self, deadline: float) -> None:
        """The kubelet's part of a pod update: metadata into the Downward API volumes; a container whose image
        changed is killed (with the grace period) and started again from the new image."""
        while True:
            try:
                pod = self._updates.get_nowait()
            except queue.Empty:
                return
            meta = self.pod["metadata"]
            new = pod.get("metadata") or {}
            if (new.get("annotations") or {}) != meta["annotations"] or (new.get("labels") or {}) != meta["labels"]:
                meta["annotations"] = dict(new.get("annotations") or {})
                meta["labels"] = dict(new.get("labels") or {})
                self._refresh_downward()
            specs = {c["name"]: c for c in (pod.get("spec") or {}).get("containers") or []}
            changed = [
                c for c in self.containers if c.name in specs and specs[c.name].get("image") != c.spec.get("image")
            ]
            self._stop([c for c in changed if c.status.exit_code is None], deadline)
            for c in changed:
                again = _Container(self, specs[c.name], init=False, attempt=c.status.restart_count + 1)
                again.last_state = c.status
                self.containers[self.containers.index(c)] = again
                again.start()

    @property
    def steps(self) -> list[_Container]:
        return [c for c in self.containers if c.name.startswith("step-")]

    def run(self, timeout: float = 300.0) -> list[ContainerStatus]:
        """Run the pod to its end; the statuses of every container, init containers first."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        self.started_at = time.time()
        self._make_volumes()
        native: list[_Container] = []
        try:
            for c in self.init_containers:
                if self._deleted.is_set():
                    break
                c.start()
                if c.native_sidecar:
                    native.append(c)
                    c.wait_started(deadline)
                    continue
                self._wait(c.poll, deadline, f"init container {c.name}")
                if c.status.exit_code != 0:
                    self.phase = "Failed"
                    return self.statuses()
            self.phase = "Running"
            if not self._deleted.is_set():
                for c in self.containers:
                    c.start()
                for c in self.containers:
                    c.wait_started(deadline)
                self._run_containers(deadline)
        finally:
            self._stop([c for c in self.containers if not c.poll()], deadline)
            self._stop(list(reversed(native)), deadline)
            for c in self.init_containers + self.containers:
                if c.proc is not None:
                    c.poll()
        ok = all(c.status.exit_code == 0 for c in self.containers)
        self.phase = "Succeeded" if ok and not self._deleted.is_set() else "Failed"
        return self.statuses()

    def _run_containers(self, deadline: float) -> None:
        ready_set = READY_ANNOTATION in self.pod["metadata"]["annotations"]
        sidecars_stopped = False
        while True:
            for c in self.containers + self.init_containers:
                c.poll()
                c.maybe_probe()
            if self._deleted.is_set():
                return
            self._apply_updates(deadline)
            if self.tekton_moves and not ready_set and self._sidecars_ready():
                self.pod["metadata"]["annotations"][READY_ANNOTATION] = READY_VALUE
                self._refresh_downward()
                ready_set = True
            if self.tekton_moves and all(c.status.exit_code is not None for c in self.steps) and not sidecars_stopped:
                sidecars_stopped = True
                self._stop_sidecars(deadline)
            if all(c.status.exit_code is not None for c in self.containers):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {self.pod['metadata']['name']} still running after its time")
            time.sleep(POLL)

    def _stop_sidecars(self, deadline: float) -> None:
        """Tekton's StopSidecars: each running sidecar's image becomes nop; the kubelet kills the container (with
        the grace period) and starts it again from nop, which exits 0 at once."""
        running = [c for c in self.containers if c not in self.steps and c.status.exit_code is None]
        self._stop(running, deadline)
        for c in running:
            spec = {k: v for k, v in c.spec.items() if k not in ("command", "args", "readinessProbe")}
            spec["image"] = self.nop_image
            nop = _Container(self, spec, init=False, attempt=1)
            nop.last_state = c.status
            self.containers[self.containers.index(c)] = nop
            nop.start()

    def _sidecars_ready(self) -> bool:
        """pkg/pod SidecarsReady: every non-step container running and ready, or ended."""
        others = [c for c in self.containers if c not in self.steps]
        return all(c.status.exit_code is not None or (c.status.running and c.status.ready) for c in others)

    def _stop(self, containers: Sequence[_Container], deadline: float) -> None:
        """The kubelet's container stop: SIGTERM to PID 1, SIGKILL when the grace period is over."""
        if not containers:
            return
        for c in containers:
            c.signal(signal.SIGTERM)
        grace_end = time.monotonic() + self.grace
        while not all(c.poll() for c in containers) and time.monotonic() < min(grace_end, deadline + self.grace):
            time.sleep(POLL)
        for c in containers:
            if not c.poll():
                c.signal(signal.SIGKILL)
        for c in containers:
            if c.proc is not None and c.status.exit_code is None:
                c.proc.wait()
                c.poll()

    def _wait(self, done: Any, deadline: float, what: str) -> None:
        while not done():
            if self._deleted.is_set():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} still running after its time")
            time.sleep(POLL)

    def statuses(self) -> list[ContainerStatus]:
        return [c.status for c in self.init_containers + self.containers]

    def status(self, name: str) -> ContainerStatus:
        for s in self.statuses():
            if s.name == name:
                return s
        raise KeyError(name)

    def pod_with_status(self) -> dict[str, Any]:
        """The Pod as the API server would hold it now, for Tekton's reconciler to read."""
        pod: dict[str, Any] = json.loads(json.dumps(self.pod))
        pod["status"] = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": _rfc3339(self.started_at),
            "initContainerStatuses": [c.status.as_k8s() for c in self.init_containers],
            "containerStatuses": [c.status.as_k8s() for c in self.containers],
        }
        return pod

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


__all__ = ["ContainerStatus", "Image", "PodError", "PodRunner", "format_map"]
