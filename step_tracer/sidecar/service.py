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
from step_tracer.sidecar.install import install_wrapper
from step_tracer.sidecar.recovery import recover, step_index
from step_tracer.span import Span
from step_tracer.tekton import paths, podinfo, spool

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from step_tracer.sidecar.convert import Converter
    from step_tracer.sidecar.shipper import Worker
    from step_tracer.sidecar.taskrun import TaskRunSpan
    from step_tracer.span import AttributeValue

DEFAULT_DRAIN_DEADLINE = 10.0
BATCH_SIZE = 128
MAX_BACKOFF = 5.0
MIN_BACKOFF = 0.5
#: At drain, how long a `.start` may wait for its `.end`: on a pod deletion the steps get SIGTERM together with
#: us and their wrappers write their ends a moment later.
RECOVERY_GRACE = 2.0
SPOOL_MODE = 0o777


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
    text = env.get("STEP_TRACER_DRAIN_DEADLINE", "").strip()
    if not text:
        return DEFAULT_DRAIN_DEADLINE
    try:
        value = float(text)
        if not 0 < value < float("inf"):
            raise ValueError
    except ValueError:
        _say(f"ignoring STEP_TRACER_DRAIN_DEADLINE={text!r}: expected a positive number of seconds; using 10")
        return DEFAULT_DRAIN_DEADLINE
    return value


def prepare_spool(path: str) -> None:
    """Steps of any UID write here and we delete what they wrote: world-writable, no sticky bit.

    An emptyDir already is; chmod only when needed, since a sidecar running as non-root does not own it.
    """
    os.makedirs(path, exist_ok=True)
    if stat.S_IMODE(os.stat(path).st_mode) != SPOOL_MODE:
        os.chmod(path, SPOOL_MODE)


def write_ready(path: str) -> None:
    target = os.path.join(path, paths.READY_FILE)
    tmp = f"{target}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
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
    from step_tracer.sidecar.convert import Converter, parse_steps
    from step_tracer.sidecar.shipper import Worker, build_exporter, exporter_mode, quiet_sdk_logs
    from step_tracer.sidecar.taskrun import TaskRunSpan

    def warn(message: str) -> None:
        _say(message.removeprefix("step-tracer: "))

    quiet_sdk_logs(debug_on)
    settings = Settings.from_env(env, warn)
    export, describe = build_exporter(settings, exporter_mode(env, warn), warn)
    converter = Converter(env.get("K8S_NODE_NAME", ""), parse_steps(env.get("STEP_TRACER_STEPS", ""), warn))
    how = "watching" if waiter.inotify is not None else f"polling every {watch.POLL_INTERVAL:g}s ({waiter.reason}):"
    _say(f"{how} {spool_dir}, exporting to {describe}")
    return Sidecar(
        spool_dir,
        stop,
        waiter,
        Worker(export),
        converter,
        TaskRunSpan(info, spool_dir, started_ns),
        settings.resource,
        describe,
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
    ) -> None:
        self.spool = spool_dir
        self.stop = stop
        self.waiter = waiter
        self.worker = worker
        self.converter = converter
        self.taskrun = taskrun
        self.resource = dict(resource)
        self.describe = describe
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
            if state == "failed":
                try:
                    self.backoff_wait()
                except DeadlineReached:
                    break
            elif state == "idle" and not self.stop.requested:
                # A signal consumed by an earlier wait is seen by the check above; a later one fills the pipe.
                self.waiter.wait(None)
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
                elif state == "again":
                    continue
                elif not self.unmatched:
                    break
                else:
                    remaining = self.stop.remaining() or 0.0
                    self.waiter.wait(min(max(recover_at - time.monotonic(), 0.0), remaining))
            self.ship_taskrun()
        except DeadlineReached:
            starts, ends = spool.list_records(self.spool)
            _say(
                f"drain deadline ({self.stop.drain:g}s) reached with {len(ends)} finished and "
                f"{len(starts - ends)} unfinished step record(s) not shipped to {self.describe}"
            )
        except Exception as err:  # the pod is going away: say what broke, but do not fail its shutdown
            _say(f"cannot drain: {problem.describe(err)}")
        else:
            _say(f"shipped {self.shipped} span(s) ({self.recovered_count} recovered); exiting")
        return 0

    # -- one pass over the spool -----------------------------------------------------------------------------

    def cycle(self, *, recover_all: bool) -> str:
        """Ship every `.end`, recover the `.start`s that will never end. "failed" when an export failed,
        "again" when the spool changed under us, else "idle"."""
        starts, ends = spool.list_records(self.spool)
        keys = sorted(ends)
        for i in range(0, len(keys), BATCH_SIZE):
            if not self._ship_ends(keys[i : i + BATCH_SIZE]):
                return "failed"
        del keys
        for key in list(self.unmatched):
            if key not in starts or key in ends:
                del self.unmatched[key]
        for key in starts - ends:
            if key not in self.unmatched:
                self._learn_start(key)
        due = [
            key
            for key, index in self.unmatched.items()
            if recover_all or (index is not None and index < self.max_index)
        ]
        state = "idle"
        for i in range(0, len(due), BATCH_SIZE):
            result = self._recover(due[i : i + BATCH_SIZE])
            if result == "failed":
                return "failed"
            if result == "again":
                state = "again"
        return state

    def _learn_start(self, key: str) -> None:
        """Remember an unfinished step's index: a later one starting means this one's end will never come."""
        path = spool.record_path(self.spool, key, spool.START)
        if key in self.recovered:
            self._unlink(path)
            return
        try:
            _resource, span = spool.read_record(path)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            self._quarantine(path, err)
            return
        index = step_index(span)
        self.unmatched[key] = index
        if index is not None and index > self.max_index:
            self.max_index = index

    def _ship_ends(self, keys: Sequence[str]) -> bool:
        batch: list[tuple[str, Span, ReadableSpan]] = []
        for key in keys:
            path = spool.record_path(self.spool, key, spool.END)
            if key in self.undeletable:
                continue
            if key in self.recovered:
                _say(f"dropping {os.path.basename(path)}: its step was already reported as not observed")
                self._unlink(path)
                continue
            try:
                resource, span = spool.read_record(path)
                readable = self.converter.readable(resource, span)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as err:
                self._quarantine(path, err)
                continue
            batch.append((key, span, readable))
        if not batch:
            return True
        if not self._export([readable for _, _, readable in batch]):
            return False
        for key, span, _ in batch:
            self._unlink(spool.record_path(self.spool, key, spool.START))
            if not self._unlink(spool.record_path(self.spool, key, spool.END)):
                self.undeletable.add(key)
            self.unmatched.pop(key, None)
            self._observe(span)
        self.shipped += len(batch)
        return True

    def _recover(self, keys: Sequence[str]) -> str:
        noticed = time.time_ns()
        state = "idle"
        batch: list[tuple[str, Span, ReadableSpan]] = []
        for key in keys:
            if os.path.exists(spool.record_path(self.spool, key, spool.END)):
                state = "again"  # it ended after all (readdir raced the rename): ship it normally
                continue
            path = spool.record_path(self.spool, key, spool.START)
            try:
                resource, span = spool.read_record(path)
                span = recover(span, noticed)
                readable = self.converter.readable(resource, span)
            except FileNotFoundError:
                self.unmatched.pop(key, None)
                continue
            except (OSError, ValueError) as err:
                self.unmatched.pop(key, None)
                self._quarantine(path, err)
                continue
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
        """A record that cannot be read never will be: hide it (readers skip dot files) rather than retry it."""
        name = os.path.basename(path)
        _say(f"skipping unreadable record {name} ({err}); kept as .{name}.bad")
        try:
            os.rename(path, os.path.join(os.path.dirname(path), f".{name}.bad"))
        except OSError:
            self._unlink(path)
