"""Reading the kubelet's Downward API files and deriving a TaskRun's ids."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from step_tracer.tekton import podinfo

# What the kubelet writes (k8s.io/kubernetes pkg/fieldpath FormatMap: sorted keys, `%v=%q`, no final newline),
# for values with the escapes Go's strconv.Quote produces.
KUBELET_LABELS = (
    'app.kubernetes.io/managed-by="tekton-pipelines"\n'
    'tekton.dev/pipeline="build"\n'
    'tekton.dev/pipelineRun="build-run-x7"\n'
    'tekton.dev/pipelineRunUID="7c9e6679-7425-40de-944b-e07fc1f90ae7"\n'
    'tekton.dev/pipelineTask="compile"\n'
    'tekton.dev/task="go-build"\n'
    'tekton.dev/taskRun="build-run-x7-compile"\n'
    'tekton.dev/taskRunUID="8c1f2a8e-5b7d-4c1e-9f00-123456789abc"'
)
KUBELET_ANNOTATIONS = (
    'multi="line one\\nline \\"two\\"\\ttab \\\\ back"\n'
    'tekton.dev/taskrunSpanContext="{\\"traceparent\\":\\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\\"}"\n'
    'unicode="caf\u00e9 \u2603"\n'
    'weird="\\x00\\a\\u200b\\U0001f600"'
)


def test_parses_the_kubelet_format_with_go_escapes() -> None:
    annotations = podinfo.parse_map(KUBELET_ANNOTATIONS)
    assert annotations["multi"] == 'line one\nline "two"\ttab \\ back'
    assert annotations["unicode"] == "caf\u00e9 \u2603"
    assert annotations["weird"] == "\x00\a\u200b\U0001f600"
    assert podinfo.carrier_context(annotations[podinfo.SPAN_CONTEXT_ANNOTATION]) is not None


@pytest.mark.parametrize(
    "line", ["novalue", "k=unquoted", 'k="open', 'k="bad \\q escape"', 'k="a"b"', 'k="\\x4"', 'k="\\"']
)
def test_malformed_lines_are_errors(line: str) -> None:
    with pytest.raises(ValueError):
        podinfo.parse_map(line)


def test_span_and_resource_attributes_follow_the_documented_mapping(tmp_path: Path) -> None:
    (tmp_path / "labels").write_text(KUBELET_LABELS)
    (tmp_path / "annotations").write_text(KUBELET_ANNOTATIONS)
    (tmp_path / "name").write_text("build-run-x7-compile-pod")
    (tmp_path / "namespace").write_text("team-a")
    (tmp_path / "uid").write_text("0d1e0f2a-0000-4000-8000-000000000001")
    info = podinfo.read(str(tmp_path))
    assert info is not None
    assert info.span_attributes() == {
        "cicd.pipeline.name": "build",
        "cicd.pipeline.run.id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "cicd.pipeline.task.run.id": "8c1f2a8e-5b7d-4c1e-9f00-123456789abc",
        "cicd.pipeline.task.name": "compile",
        "tekton.pipelinerun.name": "build-run-x7",
        "tekton.taskrun.name": "build-run-x7-compile",
        "tekton.task.name": "go-build",
        "tekton.pipeline.task.name": "compile",
    }
    assert info.resource_attributes() == {
        "k8s.namespace.name": "team-a",
        "k8s.pod.name": "build-run-x7-compile-pod",
        "k8s.pod.uid": "0d1e0f2a-0000-4000-8000-000000000001",
    }


def test_standalone_taskrun_names_its_task_by_taskrun(tmp_path: Path) -> None:
    (tmp_path / "labels").write_text('tekton.dev/taskRun="hello-run"\ntekton.dev/taskRunUID="u-1"')
    info = podinfo.read(str(tmp_path))
    assert info is not None and info.annotations == {}
    assert info.span_attributes()["cicd.pipeline.task.name"] == "hello-run"


def test_a_directory_without_labels_is_not_pod_info(tmp_path: Path) -> None:
    assert podinfo.read(str(tmp_path)) is None


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}', True),
        ('  { "traceparent" : "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" , "tracestate":"a=1" } ', True),
        ("{}", False),
        ('{"traceparent":"00-00000000000000000000000000000000-b7ad6b7169203331-01"}', False),
    ],
)
def test_carrier_context(text: str, ok: bool) -> None:
    assert (podinfo.carrier_context(text) is not None) is ok


@pytest.mark.parametrize("text", ["", "[]", '{"traceparent":1}', '{"a":"b",}', '{"a":"b"} x', '{"a":"b"'])
def test_malformed_carriers_raise(text: str) -> None:
    with pytest.raises(ValueError):
        podinfo.parse_carrier(text)


def test_carrier_keeps_tracestate() -> None:
    ctx = podinfo.carrier_context(
        '{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00","tracestate":"v=1"}'
    )
    assert ctx is not None and ctx.trace_state == "v=1" and not ctx.sampled


def test_derived_ids_are_the_uid_and_stable() -> None:
    uid = str(uuid.uuid4())
    one, two = podinfo.derived_context(uid), podinfo.derived_context(uid)
    assert one.trace_id == uid.replace("-", "") and one.span_id == two.span_id and len(one.span_id) == 16
    assert podinfo.derived_context(str(uuid.uuid4())).span_id != one.span_id
    odd = podinfo.derived_context("not-a-uuid")
    assert len(odd.trace_id) == 32 and int(odd.trace_id, 16) and odd.sampled


@pytest.mark.parametrize(
    ("name", "index", "expected"),
    [
        ("build", 0, "step-build"),
        ("", 3, "step-unnamed-3"),
        ("a" * 70, 0, "step-" + "a" * 58),
        ("x" * 57 + "-y", 0, "step-" + "x" * 57),
    ],
)
def test_container_names_follow_tektons_pod_builder(name: str, index: int, expected: str) -> None:
    assert podinfo.container_name(name, index) == expected


def _volume(directory: Path, ready: bool) -> None:
    from tests.real import kubelet

    annotations = 'tekton.dev/ready="READY"' if ready else ""
    files = {"labels": KUBELET_LABELS.encode(), "annotations": annotations.encode(), "name": b"pod-1"}
    kubelet.write_volume(directory, files)


def test_a_kubelet_update_while_reading_gives_the_whole_pod_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 200-TaskRun test's lost spans: the kubelet swaps the volume (the tekton.dev/ready annotation) as the
    first step starts; a read racing the swap resolved `..data` to the old directory just as it was deleted,
    found no labels, and the step's span went to a new trace with no TaskRun span. The race is injected here:
    the swap happens inside the first read, which then fails as the racing open did."""
    _volume(tmp_path, ready=False)
    real_read = podinfo._read_text
    raced: list[str] = []

    def racing_read(path: str) -> str:
        if not raced:
            raced.append(path)
            _volume(tmp_path, ready=True)  # new ..data, old directory deleted
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_read(path)

    monkeypatch.setattr(podinfo, "_read_text", racing_read)
    info = podinfo.read(str(tmp_path))
    assert raced and info is not None
    assert info.taskrun_uid == "8c1f2a8e-5b7d-4c1e-9f00-123456789abc"
    assert (info.name, info.annotations) == ("pod-1", {"tekton.dev/ready": "READY"})


def test_a_plain_directory_is_read_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "labels").write_text(KUBELET_LABELS)
    info = podinfo.read(str(tmp_path))
    assert info is not None and info.labels["tekton.dev/task"] == "go-build" and info.annotations == {}
