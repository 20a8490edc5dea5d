"""`step-tracer run`: spawn, wait, measure, record.

The order of work is the product: nothing that can fail or take time happens between the command's end and the
wrapper's exit except writing the span, and no failure of ours changes what the step sees. Modelled on Tekton's
pkg/entrypoint: this module decides, `process` runs the child, `sampler`/`cgroup` measure, `export` ships.
"""

from __future__ import annotations

import os
import sys
import time

from step_tracer import context
from step_tracer.span import STATUS_ERROR, Batch, Event, Span
from step_tracer.wrapper import cgroup, options, outcome, process

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from step_tracer.export.settings import Settings
    from step_tracer.span import Attributes
    from step_tracer.tekton import identity
    from step_tracer.wrapper.outcome import Outcome
    from step_tracer.wrapper.process import Sampler
    from step_tracer.wrapper.sampler import TreeSampler

#: Where Tekton's init container writes `script:` steps (pkg/pod/script.go).
TEKTON_SCRIPTS = "/tekton/scripts/"


def _warn(message: str) -> None:
    sys.stderr.write(f"step-tracer: {message}\n")
    sys.stderr.flush()


def parent_context(env: Mapping[str, str]) -> context.SpanContext | None:
    value = env.get("TRACEPARENT")
    if not value:
        return None
    parent = context.parse_traceparent(value, env.get("TRACESTATE", ""))
    if parent is None:
        _warn(f"ignoring malformed TRACEPARENT {value[:80]!r}; starting a new trace")
    return parent


def _executable_path(command: str, env: Mapping[str, str]) -> str:
    if "/" in command:
        return os.path.abspath(command)
    for directory in env.get("PATH", os.defpath).split(":"):
        candidate = os.path.join(directory or ".", command)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return ""


def describe(
    opts: options.RunOptions,
    span: Span,
    end: Outcome,
    *,
    pid: int = 0,
    exit_code: int,
    env: Mapping[str, str],
) -> None:
    """Fill in the attributes and status every step span carries (README: the span contract)."""
    command = opts.display_command or opts.command
    program = opts.program or command[0]
    attrs: Attributes = {
        **opts_attributes(opts),
        "process.executable.name": os.path.basename(program),
        "process.exit.code": exit_code,
        "process.parent_pid": os.getpid(),
        "cicd.pipeline.task.run.result": end.result,
    }
    if pid:
        attrs["process.pid"] = pid
    path = _executable_path(program, env)
    if path:
        attrs["process.executable.path"] = path
    if opts.record_args:
        from step_tracer.wrapper.redact import redact

        attrs["process.command_args"] = redact(list(command))
    if end.error_type:
        attrs["error.type"] = end.error_type
        span.status_code = STATUS_ERROR
        span.status_message = end.message
    attrs.update(opts.attrs)
    span.attributes.update(attrs)


def opts_attributes(opts: options.RunOptions) -> Attributes:
    """What is known before the command starts (also in the write-ahead start record)."""
    attrs: Attributes = {"process.command": (opts.display_command or opts.command)[0]}
    if opts.tekton_step:
        attrs["tekton.step.name"] = opts.tekton_step
    if opts.tekton_step_index is not None:
        attrs["tekton.step.index"] = opts.tekton_step_index
    if opts.tekton_step_timeout is not None:
        attrs["tekton.step.timeout"] = opts.tekton_step_timeout
    attrs.update(opts.attrs)
    return attrs


def _usage(child: process.ChildExit, sampler: TreeSampler | None) -> Attributes:
    attrs: Attributes = {}
    ru = child.rusage
    peak = 0
    if ru is not None:
        attrs["process.cpu.time.user"] = ru.ru_utime
        attrs["process.cpu.time.system"] = ru.ru_stime
        # Exact only above the wrapper's own peak, which the kernel folds into the child's ru_maxrss at exec: at or
        # below it the command's peak is unknown (smaller), and the wrapper's size is no figure of the command.
        if child.spawner_peak and ru.ru_maxrss * 1024 > child.spawner_peak:
            peak = ru.ru_maxrss * 1024
        attrs["process.disk.io.read"] = ru.ru_inblock * 512
        attrs["process.disk.io.write"] = ru.ru_oublock * 512
    if sampler is not None:
        peak = max(peak, sampler.peak_rss)
    if peak:
        attrs["process.memory.peak"] = peak
    return attrs


def _events(child: process.ChildExit) -> list[Event]:
    return [Event("signal.forwarded", t, {"signal": process.signal_name(s)}) for t, s in child.forwarded]


def _exec_untraced(command: list[str]) -> int:
    """Replace the wrapper with the command: tracing is off, so it should not even be in the process tree."""
    try:
        process.replace(command, process.original_environ())
    except process.SpawnError as err:
        _warn(str(err))
        return err.exit_code


def main(argv: list[str]) -> int:
    """Run the step; whatever goes wrong on our side, the command still runs and its exit code is returned."""
    try:
        opts = options.parse(argv)
    except options.UsageError as err:
        if err.command:
            _warn(f"{err}; running the command untraced")
            return _exec_untraced(err.command)
        _warn(f"{err} (see step-tracer run --help)")
        return 2
    return _main(opts)


def main_script(argv: list[str]) -> int:
    """`run-script`: the kernel ran us as a patched script's interpreter (see `wrapper.script`)."""
    from step_tracer.wrapper import script

    try:
        opts = script.prepare(argv)
    except options.UsageError as err:
        _warn(str(err))
        return 2
    except script.ScriptError as err:
        if err.fallback:
            _warn(f"{err}; running the script untraced")
            return _exec_untraced(err.fallback)
        _warn(str(err))
        return 126
    return _main(opts)


def _main(opts: options.RunOptions) -> int:
    try:
        traced = _prepare(opts)
    except Exception as err:  # our bug must not become the step's failure
        _warn(f"internal error before the command started ({err!r}); running it untraced")
        return _exec_untraced(opts.command)
    if traced is None:
        return _exec_untraced(opts.command)
    return _run_traced(opts, traced)


def _tekton_step(opts: options.RunOptions) -> bool:
    """Run as a Tekton step (the patcher's or the webhook's options): the step is a container of its own."""
    return bool(opts.tekton_step) or opts.tekton_step_index is not None


class Traced:
    """A step about to run traced: where its span goes and what the child's environment is."""

    __slots__ = ("child_env", "settings", "span", "spool")

    def __init__(self, settings: Settings, span: Span, child_env: dict[str, str], spool: str | None) -> None:
        self.settings = settings
        self.span = span
        self.child_env = child_env
        self.spool = spool


def _step_from_entrypoint(opts: options.RunOptions, real: identity.EntrypointStep | None) -> None:
    """Take the step's index, name and timeout from Tekton's entrypoint where it says them: a patched StepAction
    only knows its own name, and any step may be moved by an edit the patch has not seen yet."""
    if real is None:
        return
    from step_tracer.tekton import identity

    if real.container is not None:
        opts.tekton_step = identity.step_name(real.container, opts.tekton_step)
    opts.tekton_step_index = real.index
    if opts.tekton_step_timeout is None and real.timeout:
        try:
            opts.tekton_step_timeout = options.parse_duration(real.timeout) or None
        except ValueError:
            pass


def _prepare(opts: options.RunOptions) -> Traced | None:
    """Settings, the step's span (ids, parent) and the child's environment; None when tracing is off."""
    from step_tracer.export.settings import Settings

    env = os.environ
    settings = Settings.from_env(env, _warn)
    if settings.disabled:
        return None
    spool: str | None = None
    attributes: Attributes = {}
    if _tekton_step(opts):
        from step_tracer.tekton import identity, step

        _step_from_entrypoint(opts, identity.read(os.getppid()))
        if not opts.program and opts.command[0].startswith(TEKTON_SCRIPTS):
            opts.program = _script_program(opts.command[0])

        placement = step.place(env, opts.tekton_step, opts.tekton_step_index, _warn)
        parent = placement.parent
        spool = placement.spool
        attributes = placement.attributes
        attributes["tekton.trace.parent_source"] = placement.source
        settings.resource.update(placement.resource)
    else:
        parent = parent_context(env)
    trace_id = parent.trace_id if parent else context.new_trace_id()
    flags = parent.trace_flags if parent else 1
    span = Span(
        opts.name or opts.tekton_step or os.path.basename((opts.display_command or opts.command)[0]),
        trace_id,
        context.new_span_id(),
        parent.span_id if parent else "",
        trace_state=parent.trace_state if parent else "",
        trace_flags=flags,
        attributes=attributes,
    )
    child_env = process.original_environ()
    child_env["TRACEPARENT"] = context.SpanContext(trace_id, span.span_id, flags).traceparent()
    if span.trace_state:
        child_env["TRACESTATE"] = span.trace_state
    return Traced(settings, span, child_env, spool)


def _script_program(path: str) -> str:
    """The interpreter of a Tekton script file (the webhook wraps `/tekton/scripts/...` as a command): the span
    names `bash`, as it does for a patched script step."""
    from step_tracer.wrapper import script

    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return ""
    return script.program_name(script.interpreter(head)) if head.startswith(b"#!") else ""


def _start_record(opts: options.RunOptions, traced: Traced) -> Span:
    span = traced.span
    start = Span(
        span.name,
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        trace_state=span.trace_state,
        trace_flags=span.trace_flags,
        start_ns=span.start_ns,
        attributes=dict(span.attributes),
    )
    start.attributes.update(opts_attributes(opts))
    return start


def _write_ahead(traced: Traced, start: Span) -> None:
    """The start record: if the wrapper is SIGKILLed (Tekton's step timeout, a cancel), the sidecar still
    makes a span from it."""
    if traced.spool is None:
        return
    from step_tracer.tekton import spool

    try:
        spool.write_start(traced.spool, traced.settings.resource, start)
    except OSError as err:
        _warn(f"cannot write the step's start record in {traced.spool} ({err}); the step runs anyway")


def _checkpointed(
    opts: options.RunOptions,
    traced: Traced,
    sampler: TreeSampler | None,
    cgroup_before: cgroup.Snapshot | None,
) -> Sampler | None:
    """The wait loop's sampler: the memory sampler, wrapped by a checkpoint before Tekton's step deadline when the
    step has a timeout and a spool (see `wrapper.checkpoint`)."""
    if traced.spool is None or not opts.tekton_step_timeout:
        return sampler
    from step_tracer.wrapper import checkpoint

    def save() -> None:
        try:
            start = _start_record(opts, traced)
            peak = sampler.peak_rss if sampler is not None else 0
            if peak:
                start.attributes["process.memory.peak"] = peak
            now = cgroup.snapshot()
            if cgroup_before is not None and now is not None:
                start.attributes.update(cgroup.usage_attributes(cgroup_before, now))
            start.attributes["tekton.step.measured_until"] = time.time_ns()
            _write_ahead(traced, start)
        except Exception as err:  # a measurement must not end the step
            _warn(f"cannot save the step's measurements before its deadline ({err!r})")

    at = time.monotonic() - checkpoint.process_age() + checkpoint.due_before(opts.tekton_step_timeout)
    return checkpoint.Checkpoint(at, save, sampler)


def _run_traced(opts: options.RunOptions, traced: Traced) -> int:
    span, child_env = traced.span, traced.child_env
    # --tekton-step-timeout is recorded, not enforced: Tekton's entrypoint SIGKILLs us at the deadline and reports
    # TimeoutExceeded (skipping later steps even under onError: continue); stopping the command earlier would
    # change that outcome. The sidecar turns the start record into a span with the result `timeout`.
    timeout, grace = opts.timeout, opts.kill_after
    sampler: TreeSampler | None = None
    if opts.sample_interval > 0:
        from step_tracer.wrapper.sampler import TreeSampler

        sampler = TreeSampler(opts.sample_interval)
    # container.* only where the cgroup is the step's own: each Tekton step is a container. Elsewhere (a laptop's
    # session, a CI runner's shared cgroup) it would be everyone's usage, and its lifetime peak besides.
    cgroup_before = cgroup.snapshot() if _tekton_step(opts) else None
    span.start_ns = time.time_ns()
    started = time.monotonic_ns()
    _write_ahead(traced, _start_record(opts, traced))
    ticker = _checkpointed(opts, traced, sampler, cgroup_before)
    try:
        child = process.run(opts.command, child_env, timeout=timeout, kill_after=grace, sampler=ticker)
    except process.SpawnError as err:
        span.end_ns = span.start_ns + (time.monotonic_ns() - started)
        _warn(str(err))
        describe(opts, span, outcome.not_started(err.exit_code, str(err)), exit_code=err.exit_code, env=child_env)
        return _finish(traced, err.exit_code)
    span.end_ns = span.start_ns + (time.monotonic_ns() - started)
    try:
        usage = _usage(child, sampler)
        cgroup_after = cgroup.snapshot() if cgroup_before is not None else None
        if cgroup_before is not None and cgroup_after is not None:
            usage.update(cgroup.usage_attributes(cgroup_before, cgroup_after))
        oom_kills = usage.get("container.memory.oom_kills", 0)
        end = outcome.classify(child, oom_kills if isinstance(oom_kills, int) else 0, timeout)
        describe(opts, span, end, pid=child.pid, exit_code=child.exit_code, env=child_env)
        span.attributes.update(usage)
        span.events = _events(child)
    except Exception as err:
        _warn(f"internal error while recording the span ({err!r}); the step's result is unchanged")
        return _end_as(child.exit_code, _signal_of(child))
    return _finish(traced, child.exit_code, _signal_of(child))


def _signal_of(child: process.ChildExit) -> int:
    """The signal the wrapper ends by: the child's own death by a signal, not the one our --timeout sent."""
    return child.signal if child.signal and not child.timed_out else 0


def _end_as(exit_code: int, signo: int) -> int:
    if signo:
        sys.stderr.flush()
        process.end_by_signal(signo)
    return exit_code


def _finish(traced: Traced, exit_code: int, signo: int = 0) -> int:
    span, settings = traced.span, traced.settings
    if traced.spool is not None:
        # Steps never talk to the network in a pod with the sidecar: it ships the spool.
        try:
            from step_tracer.tekton import spool

            spool.write_end(traced.spool, settings.resource, span)
        except Exception as err:
            _warn(f"span not written to the spool {traced.spool} ({err}); the step's result is unchanged")
        return _end_as(exit_code, signo)
    try:
        from step_tracer.export import export

        result = export([Batch(settings.resource, [span])], settings, err=sys.stderr)
    except Exception as err:
        _warn(f"internal error while exporting the span ({err!r}); the step's result is unchanged")
        return _end_as(exit_code, signo)
    if result.abandoned:
        _end_as(exit_code, signo)
        os._exit(exit_code)
    return _end_as(exit_code, signo)
