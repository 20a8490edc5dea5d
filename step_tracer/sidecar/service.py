"""The sidecar's life: prepare the pod (spool, wrapper, TaskRun context, readiness), ship the spool until
SIGTERM, then drain it within a deadline and exit 0.

Crash-safe order: a record is deleted only after the exporter returned SUCCESS, the `.start` before the `.end`
(a crash between the two re-ships an identical span instead of recovering a false one). A `.start` whose step
will never write its `.end` is recovered (recovery.py) when a later step has started, and at drain.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from step_tracer import problem
from step_tracer.sidecar import watch
from step_tracer.sidecar.admit import Orphan, Rejected, TokenBucket, normalise, positive_number
from step_tracer.sidecar.install import install_wrapper
from step_tracer.sidecar.recovery import recover, step_index
from step_tracer.span import Span
from step_tracer.tekton import paths, podinfo, spool

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from step_tracer.sidecar.admit import Admission
    from step_tracer.sidecar.convert import Converter
    from step_tracer.sidecar.shipper import Worker
    from step_tracer.sidecar.taskrun import TaskRunSpan
    from step_tracer.span import Attributes, AttributeValue

DEFAULT_DRAIN_DEADLINE = 10.0
BATCH_SIZE = 128
MAX_BACKOFF = 5.0
MIN_BACKOFF = 0.5
#: At drain, how long a `.start` may wait for its `.end`: on a pod deletion the steps get SIGTERM together with
#: us and their wrappers write their ends a moment later.
RECOVERY_GRACE = 2.0
#: World-writable (steps of any UID write records) and sticky where the sidecar may set it: another UID's step
#: then cannot delete or replace a record it did not write. A non-root sidecar on the kubelet's root-owned
#: emptyDir may not chmod it, and would not be allowed to delete the steps' records under a sticky bit either.
SPOOL_MODE = 0o1777
#: The bytes of records read into one export batch: bounds memory whatever the records hold.
BATCH_BYTES = 4 << 20
#: Quarantined records each get a line up to this many; then one line says how many more there were.
QUARANTINE_LINES = 10


def _say(message: str) -> None:
    sys.stderr.write(f"step-tracer sidecar: {message}\n")
    sys.stderr.flush()


def debug_enabled(env: Mapping[str, str]) -> bool:
    return env.get("STEP_TRACER_DEBUG", "") not in ("", "0")


class DeadlineReached(Exception):
    pass


class Stop:
    """SIGTERM/SIGINT received: from then on every wait is bounded by the drain deadline."""

    def __init__(self, drain: float) -> None:
        self.drain = drain
        self.requested = False
        self.deadline: float | None = None

    def request(self, _signum: int = 0) -> None:
        if not self.requested:
            self.requested = True
            self.deadline = time.monotonic() + self.drain

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def drain_deadline(env: Mapping[str, str]) -> float:
    return positive_number(env, "STEP_TRACER_DRAIN_DEADLINE", DEFAULT_DRAIN_DEADLINE, _say, " of seconds")


def prepare_spool(path: str) -> None:
    """Steps of any UID write here: world-writable, and sticky when the sidecar owns it or is root (SPOOL_MODE).

    An emptyDir is root-owned 0777: a non-root sidecar leaves it as it is (and still deletes what steps wrote).
    """
    os.makedirs(path, exist_ok=True)
    info = os.stat(path)
    if stat.S_IMODE(info.st_mode) != SPOOL_MODE and os.geteuid() in (0, info.st_uid):
        os.chmod(path, SPOOL_MODE)


def write_ready(path: str) -> None:
    target = os.path.join(path, paths.READY_FILE)
    tmp = f"{target}.{os.getpid()}.tmp"
    fd = spool.open_new(tmp, 0o644)
    try:
        os.write(fd, b"ready\n")
    finally:
        os.close(fd)
    os.rename(tmp, target)


def main(
    spool_dir: str,
    install_dir: str | None,
    wrapper_source: str,
    kube_api: str = "",
    env: Mapping[str, str] | None = None,
) -> int:
    env = os.environ if env is None else env
    started_ns = time.time_ns()
    debug_on = debug_enabled(env)

    def debug(message: str) -> None:
        if debug_on:
            _say(message)

    stop = Stop(drain_deadline(env))
    waiter = watch.Waiter()
    waiter.install_signals(stop.request)
    try:
        prepare_spool(spool_dir)
    except OSError as err:
        _say(f"cannot prepare the spool {spool_dir}: {err.strerror or err}")
    if install_dir:
        install_wrapper(wrapper_source, install_dir, _say)
    info_dir = paths.podinfo_dir(env)
    info: podinfo.PodInfo | None = None
    try:
        info = podinfo.read(info_dir)
    except (OSError, ValueError) as err:
        _say(f"ignoring pod info in {info_dir} ({err})")
    if info is None:
        debug(f"no pod info in {info_dir}: not a Tekton pod of ours, no TaskRun span")
    # Before the SDK is imported: the lookup's child process then shares the memory limit with a small parent.
    from step_tracer.sidecar.taskrun import resolve_status_context

    resolve_status_context(info, spool_dir, kube_api, env, debug)
    try:
        write_ready(spool_dir)
    except OSError as err:
        _say(f"cannot write {spool_dir}/{paths.READY_FILE}: {err.strerror or err}")
    waiter.watch(spool_dir, use_inotify=env.get("STEP_TRACER_SIDECAR_INOTIFY", "1") != "0")
    sidecar = _build(spool_dir, info, started_ns, stop, waiter, env, debug_on)
    code = sidecar.serve()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skips interpreter shutdown on purpose: an export abandoned at the deadline may still hold a thread in a
    # gRPC or HTTP call that would block a normal exit.
    os._exit(code)


def _build(
    spool_dir: str,
    info: podinfo.PodInfo | None,
    started_ns: int,
    stop: Stop,
    waiter: watch.Waiter,
    env: Mapping[str, str],
    debug_on: bool,
) -> Sidecar:
    from step_tracer.export.settings import Settings
    from step_tracer.sidecar.admit import Admission, Limits
    from step_tracer.sidecar.convert import Converter, parse_steps
    from step_tracer.sidecar.shipper import Worker, build_exporter, exporter_mode, quiet_sdk_logs
    from step_tracer.sidecar.taskrun import TaskRunSpan

    def warn(message: str) -> None:
        _say(message.removeprefix("step-tracer: "))

    quiet_sdk_logs(debug_on)
    settings = Settings.from_env(env, warn)
    export, describe = build_exporter(settings, exporter_mode(env, warn), warn)
    steps = parse_steps(env.get("STEP_TRACER_STEPS", ""), warn)
    converter = Converter(env.get("K8S_NODE_NAME", ""), steps)
    taskrun = TaskRunSpan(info, spool_dir, started_ns)
    resource = dict(settings.resource)
    if info is not None:
        resource.update(info.resource_attributes())
    if env.get("K8S_NODE_NAME"):
        resource["k8s.node.name"] = env["K8S_NODE_NAME"]
    admission = Admission(
        steps,
        taskrun.pod_trace(),
        info.span_attributes() if info is not None else {},
        resource,
        Limits.from_env(env, warn),
    )
    how = "watching" if waiter.inotify is not None else f"polling every {watch.POLL_INTERVAL:g}s ({waiter.reason}):"
    _say(f"{how} {spool_dir}, exporting to {describe}")
    return Sidecar(
        spool_dir,
        stop,
        waiter,
        Worker(export),
        converter,
        taskrun,
        settings.resource,
        describe,
        admission,
    )


class Sidecar:
    def __init__(
        self,
        spool_dir: str,
        stop: Stop,
        waiter: watch.Waiter,
        worker: Worker,
        converter: Converter,
        taskrun: TaskRunSpan,
        resource: Mapping[str, AttributeValue],
        describe: str,
        admission: Admission,
    ) -> None:
        self.spool = spool_dir
        self.stop = stop
        self.waiter = waiter
        self.worker = worker
        self.converter = converter
        self.taskrun = taskrun
        self.resource = dict(resource)
        self.describe = describe
        self.admission = admission
        self.bucket = TokenBucket(admission.limits.rate, admission.limits.burst)
        self.reads = 0
        self.over_budget = 0
        self.quarantined = 0
        self.owners: dict[str, int] = {}  # key -> the UID that wrote its .start
        self.unmatched: dict[str, int | None] = {}  # starts without an end: key -> step index
        self.max_index = -1
        self.recovered: set[str] = set()
        self.undeletable: set[str] = set()  # shipped, but the .end stayed: never ship it again
        self.backoff = 0.0
        self.failing = False
        self.shipped = 0
        self.recovered_count = 0

    # -- the two phases --------------------------------------------------------------------------------------

    def serve(self) -> int:
        while not self.stop.requested:
            try:
                state = self.cycle(recover_all=False)
            except DeadlineReached:
                break
            except Exception as err:  # never die with steps still writing: say it and try again later
                _say(f"cannot ship: {problem.describe(err)}")
                state = "failed"
            try:
                if state == "failed":
                    self.backoff_wait()
                elif state == "throttled":
                    self.waiter.wait(self.bucket.wait_time(), spool=False)
                elif state == "idle" and not self.stop.requested:
                    # A signal consumed by an earlier wait is seen by the check above; a later one fills the pipe.
                    self.waiter.wait(None)
            except DeadlineReached:
                break
        return self.drain()

    def drain(self) -> int:
        self.stop.request()
        recover_at = time.monotonic() + min(RECOVERY_GRACE, self.stop.drain / 4)
        try:
            while True:
                if self.stop.expired():
                    raise DeadlineReached
                state = self.cycle(recover_all=time.monotonic() >= recover_at)
                if state == "failed":
                    self.backoff_wait()
                elif state == "throttled":
                    self.waiter.wait(min(self.bucket.wait_time(), self.stop.remaining() or 0.0), spool=False)
                elif state == "again":
                    continue
                elif not self.unmatched:
                    break
                else:
                    remaining = self.stop.remaining() or 0.0
                    self.waiter.wait(min(max(recover_at - time.monotonic(), 0.0), remaining))
            self.ship_taskrun()
        except DeadlineReached:
            self.spill()
        except Exception as err:  # the pod is going away: say what broke, but do not fail its shutdown
            _say(f"cannot drain: {problem.describe(err)}")
        else:
            _say(f"shipped {self.shipped} span(s) ({self.recovered_count} recovered){self._refused()}; exiting")
        return 0

    def _refused(self) -> str:
        parts = []
        if self.quarantined:
            parts.append(f"{self.quarantined} record(s) refused")
        if self.over_budget:
            parts.append(f"{self.over_budget} record(s) over the pod's budget of {self.admission.limits.records}")
        return "; " + ", ".join(parts) if parts else ""

    # -- one pass over the spool -----------------------------------------------------------------------------

    def cycle(self, *, recover_all: bool) -> str:
        """Ship every `.end`, recover the `.start`s that will never end. "failed" when an export failed,
        "throttled" when the pod's record rate ran out, "again" when the spool changed under us, else "idle"."""
        refused = self.quarantined
        starts, ends = spool.list_records(self.spool)
        for key in list(self.unmatched):
            if key not in starts or key in ends:
                del self.unmatched[key]
        # Running steps first: a child span's end names its step's span as parent. A child's start may come
        # before its step's in this pass: those are looked at again once the others are known.
        later: list[str] = []
        for key in starts - ends:
            if key not in self.unmatched:
                learned = self._learn_start(key, defer=True)
                if learned == "throttled":
                    return "throttled"
                if learned == "orphan":
                    later.append(key)
        for key in later:
            if self._learn_start(key) == "throttled":
                return "throttled"
        keys = sorted(ends)
        orphans: list[str] = []
        for i in range(0, len(keys), BATCH_SIZE):
            state = self._ship_ends(keys[i : i + BATCH_SIZE], orphans)
            if state != "idle":
                return state
        del keys
        if orphans:  # their step's own end may have come later in this pass; a second refusal is final
            state = self._ship_ends(orphans, None)
            if state != "idle":
                return state
        due = [
            key
            for key, index in self.unmatched.items()
            if recover_all or (index is not None and index < self.max_index)
        ]
        state = "idle"
        for i in range(0, len(due), BATCH_SIZE):
            result = self._recover(due[i : i + BATCH_SIZE])
            if result in ("failed", "throttled"):
                return result
            if result == "again":
                state = "again"
        if self.quarantined != refused:
            return "again"  # a refused end leaves its start behind: look at it now, not at the next record
        return state

    def _load(self, key: str, suffix: str) -> tuple[Span, int, int] | str:
        """(span, owner uid, size) of a record, or why not: "gone", "refused" (quarantined or over the pod's
        budget, and removed), "throttled" (over the pod's rate: left for later)."""
        path = spool.record_path(self.spool, key, suffix)
        if self.reads >= self.admission.limits.records:
            self._unlink(path)
            self.over_budget += 1
            if self.over_budget == 1:
                _say(
                    f"the pod's budget of {self.admission.limits.records} spool records is spent "
                    "(STEP_TRACER_MAX_RECORDS); deleting further records unread"
                )
            return "refused"
        if not self.bucket.take():
            return "throttled"
        self.reads += 1
        try:
            data, owner = spool.read_limited(path, spool.MAX_RECORD_BYTES)
            _resource, span = spool.parse_record(data.decode("utf-8", "replace"))
        except FileNotFoundError:
            return "gone"
        except (OSError, ValueError) as err:
            self._quarantine(path, err)
            return "refused"
        return span, owner, len(data)

    def _learn_start(self, key: str, defer: bool = False) -> str:
        """Remember an unfinished step's index: a later step starting means this one's end will never come."""
        path = spool.record_path(self.spool, key, spool.START)
        if key in self.recovered:
            self._unlink(path)
            return "idle"
        loaded = self._load(key, spool.START)
        if isinstance(loaded, str):
            return loaded
        span, owner, _size = loaded
        try:
            index = self.admission.step_of(normalise(span, time.time_ns()))
        except Orphan as err:
            if defer:
                return "orphan"
            self._quarantine(path, err)
            return "refused"
        except Rejected as err:
            self._quarantine(path, err)
            return "refused"
        self.owners[key] = owner
        self.unmatched[key] = index if index >= 0 else None
        if index > self.max_index:
            self.max_index = index
        return "idle"

    def _admit(self, key: str, suffix: str, defer: bool = False) -> tuple[Span, ReadableSpan, int, Attributes] | str:
        loaded = self._load(key, suffix)
        if isinstance(loaded, str):
            return loaded
        span, owner, size = loaded
        path = spool.record_path(self.spool, key, suffix)
        try:
            started_by = self.owners.get(key)
            if started_by is None:  # its start not looked at yet: its owner is enough
                try:
                    started_by = os.lstat(spool.record_path(self.spool, key, spool.START)).st_uid
                except OSError:
                    started_by = owner
            if owner != started_by:
                raise Rejected(f"written by UID {owner}, its start by UID {started_by}")
            if suffix == spool.START:
                span = recover(normalise(span, time.time_ns()), time.time_ns())
            resource, span = self.admission.admit(key, span)
            readable = self.converter.readable(resource, span)
        except Orphan as err:
            if defer:
                return "orphan"
            self._quarantine(path, err)
            return "refused"
        except ValueError as err:  # Rejected, or ids the SDK refuses
            self._quarantine(path, err)
            return "refused"
        return span, readable, size, resource

    def _ship_ends(self, keys: Sequence[str], orphans: list[str] | None) -> str:
        """Ship these `.end`s; child spans whose step is not known yet go to `orphans` (None: refuse them)."""
        batch: list[tuple[str, Span, ReadableSpan]] = []
        size = 0
        state = "idle"
        for key in keys:
            path = spool.record_path(self.spool, key, spool.END)
            if key in self.undeletable:
                continue
            if key in self.recovered:
                _say(f"dropping {os.path.basename(path)}: its step was already reported as not observed")
                self._unlink(path)
                continue
            admitted = self._admit(key, spool.END, defer=orphans is not None)
            if admitted == "throttled":
                state = "throttled"
                break
            if admitted == "orphan" and orphans is not None:
                orphans.append(key)
                continue
            if isinstance(admitted, str):
                continue
            span, readable, record_size, _ = admitted
            batch.append((key, span, readable))
            size += record_size
            if size >= BATCH_BYTES:
                state = "again"
                break
        if not batch:
            return state
        if not self._export([readable for _, _, readable in batch]):
            return "failed"
        for key, span, _ in batch:
            self._unlink(spool.record_path(self.spool, key, spool.START))
            if not self._unlink(spool.record_path(self.spool, key, spool.END)):
                self.undeletable.add(key)
            self.unmatched.pop(key, None)
            self._observe(span)
        self.shipped += len(batch)
        return state

    def _recover(self, keys: Sequence[str]) -> str:
        state = "idle"
        batch: list[tuple[str, Span, ReadableSpan]] = []
        for key in keys:
            if os.path.exists(spool.record_path(self.spool, key, spool.END)):
                state = "again"  # it ended after all (readdir raced the rename): ship it normally
                continue
            admitted = self._admit(key, spool.START)
            if admitted == "throttled":
                state = "throttled"
                break
            if isinstance(admitted, str):
                self.unmatched.pop(key, None)
                continue
            span, readable, _size, _ = admitted
            batch.append((key, span, readable))
        if batch:
            if not self._export([readable for _, _, readable in batch]):
                return "failed"
            for key, span, _ in batch:
                self.recovered.add(key)
                self.unmatched.pop(key, None)
                self._unlink(spool.record_path(self.spool, key, spool.START))
                self._observe(span)
            self.shipped += len(batch)
            self.recovered_count += len(batch)
        return state

    def _observe(self, span: Span) -> None:
        index = step_index(span)
        if index is not None and index > self.max_index:
            self.max_index = index
        info = self.converter.step_info(span)
        self.taskrun.observe(span, info.on_error if info is not None else "")

    def ship_taskrun(self) -> None:
        built = self.taskrun.build(time.time_ns(), self.resource)
        if built is None:
            return
        resource, span = built
        readable = self.converter.readable(resource, span)
        while not self._export([readable]):
            self.backoff_wait()
        self.shipped += 1

    # -- the drain deadline passed: hand what is left to the log pipeline ----------------------------------

    def spill(self) -> None:
        """Write every span not shipped to stdout as OTLP JSON lines (one ExportTraceServiceRequest per line, what
        the Collector's otlpjson connector and `step-tracer replay` read), then delete its records.

        The batch in flight when the deadline passed may still have reached the collector: replaying it sends
        the same span ids again (at-least-once)."""
        from step_tracer.otlp import json_codec
        from step_tracer.span import Batch

        self.bucket = TokenBucket(float("inf"), float("inf"))  # the rate no longer matters; the budget still does
        written = 0
        out = sys.stdout.buffer

        def emit(resource: Mapping[str, AttributeValue], span: Span) -> None:
            nonlocal written
            out.write(json_codec.encode([Batch(resource, [span])]).encode("utf-8", "backslashreplace") + b"\n")
            written += 1

        starts, ends = spool.list_records(self.spool)
        try:
            for key in sorted(ends) + sorted(starts - ends):
                suffix = spool.END if key in ends else spool.START
                if key in self.undeletable or key in self.recovered:
                    continue
                admitted = self._admit(key, suffix)
                if isinstance(admitted, str):
                    continue
                span, _readable, _size, resource = admitted
                emit(resource, span)
                out.flush()
                self._unlink(spool.record_path(self.spool, key, suffix))
                if suffix == spool.END:
                    self._unlink(spool.record_path(self.spool, key, spool.START))
                self._observe(span)
            built = self.taskrun.build(time.time_ns(), self.resource)
            if built is not None:
                emit(*built)
            out.flush()
        except OSError as err:
            _say(f"cannot write the remaining spans to stdout: {err}")
        _say(
            f"drain deadline ({self.stop.drain:g}s) reached: {self.shipped} span(s) shipped to {self.describe}, "
            f"{written} written to stdout as OTLP JSON lines (step-tracer replay, or the Collector's otlpjson "
            f"connector, ships them){self._refused()}"
        )

    # -- exporting and waiting -------------------------------------------------------------------------------

    def _export(self, spans: Sequence[ReadableSpan]) -> bool:
        # An unsampled parent (Tekton's trace sampled out) means: record nothing, as the SDK's samplers would.
        spans = [s for s in spans if s.context is not None and s.context.trace_flags.sampled]
        if not spans:
            return True
        self.worker.submit(spans)
        while True:
            result = self.worker.result()
            if result is not None:
                break
            if self.stop.expired():
                raise DeadlineReached
            self.waiter.wait(self.stop.remaining(), spool=False, extra_fd=self.worker.fd)
        if result and self.failing:
            _say(f"exporting to {self.describe} works again")
        elif not result and not self.failing:
            _say(
                f"cannot export to {self.describe}; retrying with backoff (up to {MAX_BACKOFF:g}s), "
                "spans stay in the spool until then"
            )
        self.failing = not result
        if result:
            self.backoff = 0.0
        return result

    def backoff_wait(self) -> None:
        """Sleep the next backoff step. Cut short by SIGTERM while serving (drain starts at once); bounded by
        the deadline while draining (DeadlineReached)."""
        self.backoff = min(max(self.backoff * 2, MIN_BACKOFF), MAX_BACKOFF)
        draining = self.stop.requested
        end = time.monotonic() + self.backoff
        while True:
            if self.stop.expired():
                raise DeadlineReached
            if self.stop.requested and not draining:
                return
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            limit = self.stop.remaining()
            self.waiter.wait(remaining if limit is None else min(remaining, limit), spool=False)

    # -- files -----------------------------------------------------------------------------------------------

    def _unlink(self, path: str) -> bool:
        """False when the file is still there afterwards."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            _say(f"cannot delete {path}: {err}")
            return False
        return True

    def _quarantine(self, path: str, err: Exception) -> None:
        """A record that cannot be read or is refused never will be shipped: hide it (readers skip dot files)
        rather than retry it. One counted line each for the first few; the total is in the closing line."""
        name = os.path.basename(path)
        self.quarantined += 1
        if self.quarantined <= QUARANTINE_LINES:
            more = " (further ones are only counted)" if self.quarantined == QUARANTINE_LINES else ""
            _say(f"refused record {self.quarantined}: {name} ({err}); kept as .{name}.bad{more}")
        try:
            os.rename(path, os.path.join(os.path.dirname(path), f".{name}.bad"))
        except OSError:
            self._unlink(path)
