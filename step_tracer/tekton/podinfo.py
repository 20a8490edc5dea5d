"""The pod's labels and annotations as the kubelet writes them into a Downward API volume, and what they say.

Read on every Tekton step, so parsed by hand: no re, no json (the kubelet's format is Go's `%q` quoting, one
`key="value"` per line; the span-context annotation is a flat JSON object of strings).
"""

from __future__ import annotations

import os

from step_tracer import context

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)
if TYPE_CHECKING:
    from step_tracer.span import Attributes

SPAN_CONTEXT_ANNOTATION = "tekton.dev/taskrunSpanContext"
TASKRUN_UID_LABEL = "tekton.dev/taskRunUID"

#: Pod labels Tekton sets (pkg/pod/pod.go) -> span attributes. The cicd.* names follow the CICD semantic
#: conventions; tekton.* keeps Tekton's own names where semconv has no slot (README: attribute mapping).
LABEL_ATTRIBUTES = (
    ("tekton.dev/pipeline", "cicd.pipeline.name"),
    ("tekton.dev/pipelineRunUID", "cicd.pipeline.run.id"),
    ("tekton.dev/taskRunUID", "cicd.pipeline.task.run.id"),
    ("tekton.dev/pipelineRun", "tekton.pipelinerun.name"),
    ("tekton.dev/taskRun", "tekton.taskrun.name"),
    ("tekton.dev/task", "tekton.task.name"),
    ("tekton.dev/pipelineTask", "tekton.pipeline.task.name"),
)
_TASK_NAME_LABELS = ("tekton.dev/pipelineTask", "tekton.dev/task", "tekton.dev/taskRun")

_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


class PodInfo:
    """What the Downward API volume holds. Missing files leave their fields empty."""

    __slots__ = ("annotations", "labels", "name", "namespace", "uid")

    def __init__(
        self,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        name: str = "",
        namespace: str = "",
        uid: str = "",
    ) -> None:
        self.labels = labels if labels is not None else {}
        self.annotations = annotations if annotations is not None else {}
        self.name = name
        self.namespace = namespace
        self.uid = uid

    @property
    def taskrun_uid(self) -> str:
        return self.labels.get(TASKRUN_UID_LABEL, "")

    def span_attributes(self) -> Attributes:
        attrs: Attributes = {}
        for label, attribute in LABEL_ATTRIBUTES:
            value = self.labels.get(label)
            if value:
                attrs[attribute] = value
        for label in _TASK_NAME_LABELS:
            value = self.labels.get(label)
            if value:
                attrs["cicd.pipeline.task.name"] = value
                break
        return attrs

    def resource_attributes(self) -> Attributes:
        attrs: Attributes = {}
        for key, value in (("k8s.namespace.name", self.namespace), ("k8s.pod.name", self.name)):
            if value:
                attrs[key] = value
        if self.uid:
            attrs["k8s.pod.uid"] = self.uid
        return attrs


#: How often `read` starts over when the kubelet replaced the volume's contents while it read them.
READ_ATTEMPTS = 5


def read(path: str) -> PodInfo | None:
    """The pod info under `path`, or None when it is not a Downward API volume of ours (no labels file).

    The kubelet updates the volume (the `tekton.dev/ready` annotation arrives about when the first step starts)
    by writing a new timestamped directory, swapping the `..data` symlink to it and deleting the old one. A
    reader going through `labels -> ..data/labels` at that moment can resolve the old directory and find it
    gone: the step's span then lost its TaskRun (a new trace, and no TaskRun span). So the files are read from
    the directory `..data` names, and read again when `..data` changed meanwhile.

    Raises ValueError on a file that is not in the kubelet's format, OSError when unreadable.
    """
    data_link = os.path.join(path, "..data")
    for _attempt in range(READ_ATTEMPTS - 1):
        try:
            snapshot = os.readlink(data_link)
        except OSError:
            return _read_files(path)  # a plain directory: nothing swaps under us
        try:
            info = _read_files(os.path.join(path, snapshot))
        except FileNotFoundError:
            info = None
        try:
            unchanged = os.readlink(data_link) == snapshot
        except OSError:
            unchanged = False
        if unchanged:
            return info if info is not None else _read_files(path)
    return _read_files(path)


def _read_files(path: str) -> PodInfo | None:
    try:
        labels_text = _read_text(os.path.join(path, "labels"))
    except FileNotFoundError:
        return None
    info = PodInfo(labels=parse_map(labels_text))
    try:
        info.annotations = parse_map(_read_text(os.path.join(path, "annotations")))
    except FileNotFoundError:
        pass
    for field in ("name", "namespace", "uid"):
        try:
            setattr(info, field, _read_text(os.path.join(path, field)).strip())
        except FileNotFoundError:
            pass
    return info


#: Kubernetes caps a pod's annotations at 256 KiB (labels are smaller): anything larger is not the kubelet's.
MAX_FILE_BYTES = 512 * 1024


def _read_text(path: str) -> str:
    """Never blocks and never reads more than MAX_FILE_BYTES (ValueError): the volume is the kubelet's, but the
    directory can be overridden (STEP_TRACER_PODINFO) and the same reader guards the sidecar."""
    from step_tracer.tekton.spool import read_limited

    return read_limited(path, MAX_FILE_BYTES, follow=True)[0].decode("utf-8", "replace")


def parse_map(text: str) -> dict[str, str]:
    """The map the kubelet wrote with fieldpath.FormatMap: sorted `key="value"` lines, values Go-quoted."""
    result: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        key, sep, quoted = line.partition("=")
        if not sep or not key:
            raise ValueError(f'line {number}: expected key="value"')
        try:
            result[key] = go_unquote(quoted)
        except ValueError as err:
            raise ValueError(f"line {number} ({key}): {err}") from None
    return result


def go_unquote(quoted: str) -> str:
    """Inverse of Go's strconv.Quote for a double-quoted string."""
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise ValueError("value is not a double-quoted string")
    body = quoted[1:-1]
    if "\\" not in body:
        if '"' in body:
            raise ValueError("unescaped quote")
        return body
    out = bytearray()
    i, end = 0, len(body)
    while i < end:
        char = body[i]
        if char == '"':
            raise ValueError("unescaped quote")
        if char != "\\":
            out += char.encode("utf-8", "surrogatepass")
            i += 1
            continue
        if i + 1 >= end:
            raise ValueError("dangling backslash")
        code = body[i + 1]
        if code in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[code].encode()
            i += 2
        elif code in "\\\"'":
            out += code.encode()
            i += 2
        elif code == "x":
            out.append(_hex(body, i + 2, 2))
            i += 4
        elif code in "uU":
            width = 4 if code == "u" else 8
            out += chr(_hex(body, i + 2, width)).encode("utf-8", "surrogatepass")
            i += 2 + width
        elif "0" <= code <= "7":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all("0" <= d <= "7" for d in digits):
                raise ValueError("bad octal escape")
            out.append(int(digits, 8) & 0xFF)
            i += 4
        else:
            raise ValueError(f"unknown escape \\{code}")
    return out.decode("utf-8", "replace")


def _hex(text: str, start: int, width: int) -> int:
    digits = text[start : start + width]
    if len(digits) != width:
        raise ValueError("short hex escape")
    try:
        return int(digits, 16)
    except ValueError:
        raise ValueError("bad hex escape") from None


def parse_carrier(text: str) -> dict[str, str]:
    """A flat JSON object of string values (Tekton's span-context carrier), without importing json.

    Raises ValueError for anything else.
    """
    from _json import scanstring

    s = text.strip()
    if not s.startswith("{") or not s.endswith("}"):
        raise ValueError("not a JSON object")
    result: dict[str, str] = {}
    i = _skip(s, 1)
    if s[i] == "}":
        return result
    while True:
        if s[i] != '"':
            raise ValueError("expected a string key")
        key, i = scanstring(s, i + 1)
        i = _skip(s, i)
        if s[i] != ":":
            raise ValueError("expected ':'")
        i = _skip(s, i + 1)
        if s[i] != '"':
            raise ValueError(f"value of {key!r} is not a string")
        value, i = scanstring(s, i + 1)
        result[key] = value
        i = _skip(s, i)
        if s[i] == "}":
            if i + 1 != len(s):  # s is stripped: anything after the brace is trailing data
                raise ValueError("trailing data")
            return result
        if s[i] != ",":
            raise ValueError("expected ',' or '}'")
        i = _skip(s, i + 1)


def _skip(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    if i >= len(s):
        raise ValueError("truncated JSON")
    return i


def carrier_context(text: str) -> context.SpanContext | None:
    """The parent a `{"traceparent": ..., "tracestate": ...}` carrier names; None if it names none validly."""
    carrier = parse_carrier(text)
    traceparent = carrier.get("traceparent", "")
    if not traceparent:
        return None
    return context.parse_traceparent(traceparent, carrier.get("tracestate", ""))


def _sha256_hex(data: bytes) -> str:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # CPython 3.11: no hashlib/OpenSSL set-up
    except ImportError:
        from hashlib import sha256
    digest: str = sha256(data).hexdigest()
    return digest


def derived_context(taskrun_uid: str) -> context.SpanContext:
    """The TaskRun's ids when Tekton gave none (tracing off): every step of one TaskRun derives the same trace
    and parent, and the sidecar emits the TaskRun span under exactly these ids.

    Trace id = the UID's 128 bits (a Kubernetes UID is a UUID); span id = a hash of the UID.
    """
    digits = taskrun_uid.replace("-", "").lower()
    if len(digits) != 32 or not all(c in "0123456789abcdef" for c in digits) or digits.strip("0") == "":
        digits = _sha256_hex(taskrun_uid.encode("utf-8", "surrogatepass"))[:32]
    span_id = _sha256_hex(b"step-tracer/taskrun/" + taskrun_uid.encode("utf-8", "surrogatepass"))[:16]
    if span_id.strip("0") == "":
        span_id = "0000000000000001"
    return context.SpanContext(digits, span_id, 1)


def container_name(step_name: str, index: int | None) -> str:
    """The step's container name as Tekton's pod builder makes it: `step-<name>` cut to 63 characters and then
    to its last alphanumeric one (names.SimpleNameGenerator.RestrictLength), or `step-unnamed-<index>`."""
    if not step_name:
        return f"step-unnamed-{index if index is not None else 0}"
    name = f"step-{step_name}"[:63]
    while name and not (name[-1].isascii() and name[-1].isalnum()):
        name = name[:-1]
    return name
