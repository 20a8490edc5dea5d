"""The whole konflux build-definitions corpus: every Task, Pipeline and StepAction patches cleanly.

Skipped when ../shared/corpus is absent. The corpus is read, never copied.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from step_tracer.inject import InjectOptions, PatchResult, patch_text, validate_document
from tests.pod_security import container_violations, pod_violations, task_pod_spec

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "konflux-build-definitions"
W = "/step-tracer/bin/step-tracer"
OPTS = InjectOptions()

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}"),
    pytest.mark.timeout(600),
]


@dataclass
class Patched:
    path: Path
    original: str
    result: PatchResult
    before: list[Any]  # documents, loaded independently of the patcher
    after: list[Any]


@dataclass
class Run:
    files: list[Patched]
    seconds: float


@pytest.fixture(scope="module")
def run() -> Run:
    paths = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    texts = [(p, p.read_text(encoding="utf-8")) for p in paths]
    start = time.perf_counter()
    results = [patch_text(t, OPTS, source=str(p.relative_to(CORPUS))) for p, t in texts]
    seconds = time.perf_counter() - start
    files = [Patched(p, t, r, load_all(t), load_all(r.text)) for (p, t), r in zip(texts, results, strict=True)]
    return Run(files, seconds)


def load_all(text: str) -> list[Any]:
    return list(YAML(typ="safe", pure=True).load_all(text))


def steps_of(doc: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(resource, step) for every step an independent reading of the Tekton API finds."""
    if not isinstance(doc, Mapping) or not str(doc.get("apiVersion", "")).startswith("tekton.dev/"):
        return
    kind, spec, name = doc.get("kind"), doc.get("spec") or {}, doc["metadata"]["name"]
    if kind == "Task":
        for step in spec.get("steps") or []:
            yield f"Task/{name}", step
    elif kind == "StepAction":
        yield f"StepAction/{name}", spec
    elif kind == "Pipeline":
        yield from pipeline_steps(spec, f"Pipeline/{name}")


def pipeline_steps(spec: Mapping[str, Any], label: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for section in ("tasks", "finally"):
        for pt in spec.get(section) or []:
            if "taskSpec" in pt and "kind" not in pt["taskSpec"]:
                for step in pt["taskSpec"].get("steps") or []:
                    yield f"{label} {pt['name']}", step
            if "pipelineSpec" in pt:
                yield from pipeline_steps(pt["pipelineSpec"], f"{label} {pt['name']}")


def test_corpus_has_tasks_pipelines_and_stepactions(run: Run) -> None:
    kinds = Counter(d.get("kind") for f in run.files for d in f.before if isinstance(d, Mapping))
    assert kinds["Task"] > 100 and kinds["Pipeline"] > 20 and kinds["StepAction"] > 0
    assert len(run.files) > 150


def test_no_patched_task_breaks_pod_security_restricted(run: Run) -> None:
    """Our sidecar is restricted on its own, and a Task's pod has no restricted violation it did not have before."""
    tasks = 0
    for f in run.files:
        for before, after in zip(f.before, f.after, strict=True):
            if not isinstance(after, Mapping) or after.get("kind") != "Task":
                continue
            ours = [s for s in after["spec"].get("sidecars") or [] if s["name"] == "step-tracer"]
            assert len(ours) == 1 and container_violations("step-tracer", ours[0], {}) == [], f.path
            old, new = pod_violations(task_pod_spec(before["spec"])), pod_violations(task_pod_spec(after["spec"]))
            assert set(new) <= set(old), (f.path, set(new) - set(old))
            tasks += 1
    assert tasks > 100


def test_every_resource_patches_validates_and_is_idempotent(run: Run) -> None:
    for f in run.files:
        assert f.result.text != f.original or not f.result.changed
        again = patch_text(f.result.text, OPTS, source=f.path.name)
        assert again.text == f.result.text, f.path
        assert not again.changed and again.additions_missing == []
        for doc in f.after:
            assert validate_document(doc, str(f.path)) == []


def test_patched_steps_are_exactly_the_wrappable_ones(run: Run) -> None:
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    for f in run.files:
        for _, step in (s for doc in f.before for s in steps_of(doc)):
            if "ref" in step:
                before["ref"] += 1
            elif step.get("script") or step.get("command"):
                before["wrappable"] += 1
            else:
                before["entrypoint"] += 1
        for _, step in (s for doc in f.after for s in steps_of(doc)):
            if "ref" in step:
                after["ref"] += 1
            elif (step.get("command") or [None])[0] == W:
                after["command"] += 1
            elif str(step.get("script", "")).startswith(f"#!{W} run-script --tekton-step="):
                after["script"] += 1
            else:
                assert not step.get("command") and not step.get("script")
                after["entrypoint"] += 1
    reported = Counter(s.state for f in run.files for s in f.result.steps)
    unwrapped = sum(len(f.result.unwrapped) for f in run.files)
    print(f"\ncorpus steps: {dict(before)}; unwrapped (image entrypoint): {unwrapped}")
    assert unwrapped == before["entrypoint"] == after["entrypoint"] > 0
    assert reported == {"wrapped": before["wrappable"], "unwrapped": before["entrypoint"], "ref": before["ref"]}
    assert after["command"] + after["script"] == before["wrappable"]
    assert all("ENTRYPOINT" in s.reason for f in run.files for s in f.result.unwrapped)


def test_every_task_spec_gets_the_sidecar_and_mounts(run: Run) -> None:
    specs = 0
    for f in run.files:
        for doc in f.after:
            for spec in task_specs(doc):
                specs += 1
                assert [s["name"] for s in spec["sidecars"]].count("step-tracer") == 1, f.path
                mounts = {m["mountPath"] for m in spec["stepTemplate"]["volumeMounts"]}
                assert {"/step-tracer/bin", "/step-tracer/spool", "/step-tracer/podinfo"} <= mounts
                names = [v["name"] for v in spec["volumes"]]
                assert {"step-tracer-bin", "step-tracer-spool", "step-tracer-podinfo"} <= set(names)
    assert specs > 100


def task_specs(doc: Any) -> Iterator[Mapping[str, Any]]:
    if not isinstance(doc, Mapping):
        return
    if doc.get("kind") == "Task":
        yield doc["spec"]
    elif doc.get("kind") == "Pipeline":
        for section in ("tasks", "finally"):
            for pt in doc["spec"].get(section) or []:
                if "taskSpec" in pt:
                    yield pt["taskSpec"]


def test_diff_shows_only_the_injection(run: Run) -> None:
    """Original lines survive in order; the only edited lines are flow-style commands gaining the wrapper."""
    edited = []
    for f in run.files:
        old = f.original.splitlines(keepends=True)
        i = 0
        for line in f.result.text.splitlines(keepends=True):
            if i < len(old) and line == old[i]:
                i += 1
            elif i < len(old) and old[i].lstrip().startswith("command: ["):
                head, tail = old[i].split("[", 1)
                inserted = line[len(head) + 1 : len(line) - len(tail)]
                assert line.startswith(head + "[") and line.endswith(tail) and inserted.startswith(f'"{W}", "run"')
                edited.append((f.path.name, old[i].strip()))
                i += 1
        assert i == len(old), f"{f.path}: original line {i + 1} changed: {old[i]!r}"
    assert edited == [("fips-operator-check-step-action.yaml", 'command: ["/usr/bin/tini"]')]


def test_whole_corpus_patches_in_reasonable_time(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    size = sum(len(f.original) for f in run.files)
    with capsys.disabled():
        print(f"\ncorpus: {len(run.files)} files, {size / 1e6:.1f} MB patched and verified in {run.seconds:.1f} s")
    assert sum(f.result.changed for f in run.files) > 100
