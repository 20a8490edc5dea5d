"""Options, results, errors and edit operations shared by the inject modules.

Planning (steps.py, resources.py) only decides *what* changes, as path-addressed operations; documents.py
decides *how* to write them (surgical text edits for YAML, a re-dump for JSON). Keeping the two apart is
what lets a YAML file come out byte-identical except for the injected lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from step_tracer.tekton import paths

DEFAULT_WRAPPER = paths.WRAPPER
# Pinned by digest, as every image in Konflux's tasks is: a tag can move under a Task nobody changed. No 0.1.0 image
# is published yet, so the digest is a visible placeholder (all zeros): it fails to pull, loudly, instead of pulling
# whatever the tag points at. At release it becomes the pushed image's digest (hack/build-image prints it); until
# then give --sidecar-image your own build, by digest.
SIDECAR_IMAGE_DIGEST = "sha256:" + "0" * 64
DEFAULT_SIDECAR_IMAGE = "quay.io/step-tracer/step-tracer:0.1.0@" + SIDECAR_IMAGE_DIGEST
DEFAULT_OTLP_SECRET = "step-tracer-otlp"

BIN_VOLUME = "step-tracer-bin"
SPOOL_VOLUME = "step-tracer-spool"
PODINFO_VOLUME = "step-tracer-podinfo"
BIN_DIR = paths.BIN_DIR
SPOOL_DIR = paths.SPOOL_DIR
PODINFO_DIR = paths.PODINFO_DIR
SIDECAR_NAME = "step-tracer"

# Tekton's own preamble for scripts without a shebang (pkg/pod/script.go, defaultScriptPreamble).
DEFAULT_SCRIPT_PREAMBLE = "#!/bin/sh\nset -e\n"

# Linux reads at most BINPRM_BUF_SIZE (256) bytes of a script to find its "#!" line; a longer line would
# be cut silently, so the wrapper would get truncated options.
MAX_SHEBANG_BYTES = 255

Resolver: TypeAlias = Callable[[str], "list[str] | None"]
"""Looks up an image's entrypoint in its registry.

Must return what Tekton would run for a step with neither `command` nor `script`: the image config's
ENTRYPOINT, or its CMD when ENTRYPOINT is empty (tektoncd/pipeline pkg/pod/entrypoint_lookup_impl.go).
Return None when unknown (private registry, platforms that disagree, ...): the step is then left alone.
"""

PathKey: TypeAlias = str | int
Path: TypeAlias = tuple[PathKey, ...]


@dataclass(frozen=True)
class InjectOptions:
    wrapper: str = DEFAULT_WRAPPER
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE
    otlp_secret: str = DEFAULT_OTLP_SECRET
    # Non-secret OTLP settings (endpoint, protocol) may live in a ConfigMap; the Secret's keys win over it.
    otlp_configmap: str = ""
    resolve_entrypoints: bool = False
    resolve: Resolver | None = None

    def __post_init__(self) -> None:
        if not self.wrapper.startswith("/") or any(c.isspace() for c in self.wrapper):
            # The wrapper is a shebang interpreter: the kernel needs an absolute path without blanks.
            raise ValueError(f"--wrapper must be an absolute path without blanks: {self.wrapper!r}")
        if not self.sidecar_image or any(c.isspace() for c in self.sidecar_image):
            raise ValueError(f"--sidecar-image must be an image reference without blanks: {self.sidecar_image!r}")
        if not self.otlp_secret:
            raise ValueError("--otlp-secret must not be empty")
        if self.resolve_entrypoints and self.resolve is None:
            raise ValueError("resolve_entrypoints needs a resolve(image) callable")


@dataclass(frozen=True)
class Location:
    """Where a note or problem applies: file, resource (e.g. "Pipeline/p tasks[build]"), step."""

    source: str
    resource: str = ""
    step: str | None = None

    def __str__(self) -> str:
        parts = [self.source]
        if self.resource:
            parts.append(self.resource)
        if self.step is not None:
            parts.append(f"step {self.step}")
        return ": ".join(parts)

    def at_step(self, step: str) -> Location:
        return Location(self.source, self.resource, step)


@dataclass(frozen=True)
class Problem:
    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class InjectError(Exception):
    """The input cannot be patched (collision, invalid result, bad input). Carries every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ParseError(InjectError):
    """The input is not valid YAML/JSON (directory walks skip such files instead of failing)."""


@dataclass(frozen=True)
class Note:
    level: Literal["info", "warning"]
    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.location}: {self.message}"


StepState = Literal["already", "stale", "wrapped", "unwrapped", "ref"]


@dataclass(frozen=True)
class StepReport:
    """What happened to one step. `already`: wrapped in the input, up to date; `stale`: wrapped in the input with
    options that no longer fit the step (renamed, moved, new timeout: `reason` says what), brought up to date;
    `wrapped`: wrapped by this patch; `unwrapped`: left alone (see `reason`); `ref`: a StepAction reference,
    patched through the StepAction."""

    location: Location
    index: int
    state: StepState
    reason: str = ""


@dataclass
class PatchResult:
    text: str
    changed: bool
    notes: list[Note] = field(default_factory=list)
    steps: list[StepReport] = field(default_factory=list)
    # Task specs that lacked the volumes/stepTemplate mounts/sidecar (and got them from this patch).
    additions_missing: list[Location] = field(default_factory=list)
    # Task specs whose volumes/mounts/sidecar were step-tracer's but out of date (the Task changed since it was
    # patched, or the options did), with what was stale; this patch brought them up to date.
    additions_stale: list[tuple[Location, str]] = field(default_factory=list)
    # How many Tekton Tasks, Pipelines and StepActions the text holds (0: nothing for step-tracer here).
    resources: int = 0

    @property
    def unwrapped(self) -> list[StepReport]:
        return [s for s in self.steps if s.state == "unwrapped"]

    @property
    def warnings(self) -> list[Note]:
        return [n for n in self.notes if n.level == "warning"]

    def pending(self) -> list[str]:
        """Everything that keeps the *input* from being fully instrumented (what `--check` lists)."""
        lines = []
        for s in self.steps:
            if s.state == "wrapped":
                lines.append(f"{s.location}: not instrumented")
            elif s.state == "stale":
                lines.append(f"{s.location}: stale: {s.reason}")
            elif s.state == "unwrapped":
                lines.append(f"{s.location}: not instrumented, cannot be wrapped: {s.reason}")
        lines.extend(f"{loc}: step-tracer volumes, mounts or sidecar missing" for loc in self.additions_missing)
        lines.extend(f"{loc}: stale: {what}" for loc, what in self.additions_stale)
        return lines


# Edit operations, addressed by paths from a document's root. They are planned against the input and
# never depend on each other's results.


@dataclass(frozen=True)
class InsertItems:
    """Insert `items` into the sequence at `path`, before position `index`."""

    path: Path
    index: int
    items: tuple[Any, ...]


@dataclass(frozen=True)
class AppendItems:
    path: Path
    items: tuple[Any, ...]


@dataclass(frozen=True)
class SetKey:
    """Add `key` to the mapping at `path` (or replace its null value).

    Placement is cosmetic: before the first present key of `before`, else after the first present key of
    `after`, else at the end.
    """

    path: Path
    key: str
    value: Any
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrefixScript:
    """Prepend `prefix` to the string at `path[key]` (kept a literal block scalar when it is one)."""

    path: Path
    key: str
    prefix: str


@dataclass(frozen=True)
class Replace:
    """Replace the value at `path` (a mapping's key or a sequence's index, last) with `value`."""

    path: Path
    value: Any


@dataclass(frozen=True)
class ReplaceItems:
    """Replace items `start` to `stop` (exclusive, `stop` < the sequence's length) of the sequence at `path`."""

    path: Path
    start: int
    stop: int
    items: tuple[Any, ...]


@dataclass(frozen=True)
class ReplaceFirstLine:
    """Replace the first line of the string at `path[key]` (a script's #! line) with `line`."""

    path: Path
    key: str
    line: str


Op: TypeAlias = InsertItems | AppendItems | SetKey | PrefixScript | Replace | ReplaceItems | ReplaceFirstLine
