"""Re-patching follows the Task: after the edits Konflux task files get every week (Renovate's digest bumps, steps
added, renamed, removed, timeouts changed, StepActions renamed), patching the patched file again gives what
patching the edited original gives, changing only step-tracer's own lines, and `--check` calls it stale.

The corpus half runs on every Task and StepAction of ../shared/corpus/konflux-build-definitions (skipped when
absent); the corpus is read, never copied.
"""

from __future__ import annotations

import difflib
import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from step_tracer.inject import InjectOptions, patch_text

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "konflux-build-definitions"
OPTS = InjectOptions()
NEW_DIGEST = "sha256:" + "0" * 64

# LibYAML when PyYAML has it: the pure-Python composer would make the corpus half take minutes.
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Edit = Callable[[str], "str | None"]


# --- edits, made the way a person or Renovate makes them: in the text, at the places an independent parser finds --


def _get(node: Node, key: str) -> Node | None:
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                found: Node = v
                return found
    return None


def _first_task_steps(text: str) -> SequenceNode | None:
    for doc in yaml.compose_all(text, Loader=LOADER):
        kind = _get(doc, "kind") if doc is not None else None
        if isinstance(kind, ScalarNode) and kind.value == "Task":
            steps = _get(_get(doc, "spec") or doc, "steps")
            if isinstance(steps, SequenceNode) and not steps.flow_style and steps.value:
                return steps
    return None


def _line_start(text: str, i: int) -> int:
    return text.rfind("\n", 0, i) + 1


def _step_field(text: str, key: str, index: int = 0) -> tuple[int, int, str] | None:
    steps = _first_task_steps(text)
    if steps is None or len(steps.value) <= index:
        return None
    node = _get(steps.value[index], key)
    if not isinstance(node, ScalarNode) or node.style:  # plain scalars only
        return None
    return node.start_mark.index, node.end_mark.index, node.value


def bump_digest(text: str) -> str | None:
    """Renovate: the first step's image gets a new digest (only the step's line; the sidecar's copy is ours)."""
    found = _step_field(text, "image")
    if found is None or "@sha256:" not in found[2]:
        return None
    start, end, image = found
    return text[:start] + image.partition("@")[0] + "@" + NEW_DIGEST + text[end:]


def rename_step(text: str) -> str | None:
    found = _step_field(text, "name")
    if found is None:
        return None
    start, end, name = found
    return text[:start] + name + "-renamed" + text[end:]


def add_timeout(text: str) -> str | None:
    found = _step_field(text, "name")
    steps = _first_task_steps(text)
    if found is None or steps is None:
        return None
    column = int(steps.value[0].start_mark.column)
    at = text.index("\n", found[1]) + 1
    return text[:at] + " " * column + "timeout: 5m\n" + text[at:]


def add_step(text: str) -> str | None:
    """A new first step: every other step's index moves."""
    steps = _first_task_steps(text)
    if steps is None:
        return None
    first = steps.value[0]
    col, at = first.start_mark.column, _line_start(text, first.start_mark.index)
    dash = " " * (text.index("-", at) - at)
    pad = " " * col
    new = (
        f"{dash}-{' ' * (col - len(dash) - 1)}name: added\n{pad}image: registry.example/added@{NEW_DIGEST}\n"
        f"{pad}script: |\n{pad}  echo added\n"
    )
    return text[:at] + new + text[at:]


def remove_step(text: str) -> str | None:
    steps = _first_task_steps(text)
    if steps is None or len(steps.value) < 2:
        return None
    begin = _line_start(text, steps.value[0].start_mark.index)
    end = _line_start(text, steps.value[1].start_mark.index)
    return text[:begin] + text[end:]


def rename_stepaction(text: str) -> str | None:
    for doc in yaml.compose_all(text, Loader=LOADER):
        kind = _get(doc, "kind") if doc is not None else None
        name = _get(_get(doc, "metadata") or doc, "name") if doc is not None else None
        is_action = isinstance(kind, ScalarNode) and kind.value == "StepAction"
        if is_action and isinstance(name, ScalarNode) and not name.style:
            return text[: name.end_mark.index] + "-v2" + text[name.end_mark.index :]
    return None


EDITS: dict[str, Edit] = {
    "digest bump": bump_digest,
    "step renamed": rename_step,
    "timeout added": add_timeout,
    "step added": add_step,
    "step removed": remove_step,
    "StepAction renamed": rename_stepaction,
}


def changed_lines(old: str, new: str) -> tuple[list[str], list[str]]:
    removed, added = [], []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:])
        elif line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:])
    return removed, added


def assert_follows(original: str, edit: Edit, source: str = "t.yaml") -> tuple[list[str], list[str], list[str]] | None:
    """Patch, edit, re-patch: the result is the patched edited original, only our lines changed, idempotent.
    Returns the removed and added lines and what --check said of the edited patched text."""
    edited_original = edit(original)
    if edited_original is None:
        return None
    patched = patch_text(original, OPTS, source=source).text
    edited = edit(patched)
    assert edited is not None
    again = patch_text(edited, OPTS, source=source)
    assert again.text == patch_text(edited_original, OPTS, source=source).text
    assert patch_text(again.text, OPTS).changed is False
    removed, added = changed_lines(edited, again.text)
    ours = Counter(edited.splitlines()) - Counter(edited_original.splitlines())
    assert Counter(removed) <= ours, removed  # only lines the first patch added
    return removed, added, again.pending()


# --- small Tasks: exact expectations ---------------------------------------------------------------------------

TASK = """\
apiVersion: tekton.dev/v1
kind: Task
metadata:
  name: build
spec:
  steps:
    - name: prepare
      image: quay.io/konflux-ci/tools@sha256:1111111111111111111111111111111111111111111111111111111111111111
      script: |
        #!/bin/bash
        echo prepare
    - name: build
      image: quay.io/konflux-ci/buildah@sha256:2222222222222222222222222222222222222222222222222222222222222222
      command:
        - buildah
        - bud
    - name: push
      image: quay.io/konflux-ci/buildah@sha256:2222222222222222222222222222222222222222222222222222222222222222
      command: [buildah, push]
"""


def test_a_digest_bump_changes_the_step_table_line_only() -> None:
    result = assert_follows(TASK, bump_digest)
    assert result is not None
    removed, added, pending = result
    assert len(removed) == len(added) == 1 and "STEP_TRACER_STEPS" not in removed[0]  # the value line
    assert NEW_DIGEST in added[0] and NEW_DIGEST not in removed[0]
    assert pending == ["t.yaml: Task/build: stale: sidecars entry 'step-tracer' out of date (env[0].value)"]


def test_a_renamed_step_changes_its_wrapper_line_and_the_table() -> None:
    result = assert_follows(TASK, rename_step)
    assert result is not None
    removed, added, pending = result
    assert len(removed) == len(added) == 2
    assert added[0].strip() == (
        "#!/step-tracer/bin/step-tracer run-script --tekton-step=prepare-renamed --tekton-step-index=0"
    )
    assert pending[0] == "t.yaml: Task/build: step prepare-renamed: stale: wrapper options out of date " + (
        "(name prepare -> prepare-renamed)"
    )


def test_an_added_step_is_wrapped_and_the_others_move_in_every_layout() -> None:
    result = assert_follows(TASK, add_step)
    assert result is not None
    removed, added, pending = result
    # three steps' indices (a #! line, a block list item, a flow list line) and the table
    assert len(removed) == 4
    assert "        - --tekton-step-index\n" not in removed and '        - "2"' in added
    assert pending[0] == "t.yaml: Task/build: step added: not instrumented"
    assert "t.yaml: Task/build: step push: stale: wrapper options out of date (index 2 -> 3)" in pending


def test_the_closing_line_counts_what_was_stale(tmp_path: Path) -> None:
    from step_tracer.inject import inject_paths

    path = tmp_path / "t.yaml"
    path.write_text(rename_step(patch_text(TASK, OPTS).text) or "")
    err = io.StringIO()
    code = inject_paths(
        [str(path)], write=False, out=io.StringIO(), check=True, diff=False, options=OPTS, err=err, summary=True
    )
    assert code == 1
    assert err.getvalue().splitlines()[-1] == (
        "step-tracer inject: 1 file, 0 steps to wrap, 2 already wrapped, 1 stale to update, "
        "1 Task spec with a stale sidecar, volumes or mounts to update"
    )


def test_removed_step_and_new_timeout() -> None:
    removed_step = assert_follows(TASK, remove_step)
    timeout = assert_follows(TASK, add_timeout)
    assert removed_step is not None and timeout is not None
    assert len(removed_step[0]) == 3  # two indices and the table
    assert timeout[1][0].endswith("--tekton-step-index=0 --tekton-step-timeout=5m")
    assert len(timeout[0]) == 1  # the table has no timeouts: the #! line only


def test_a_timeout_added_to_a_command_step_lengthens_its_wrapper_part() -> None:
    edit: Edit = lambda t: t.replace("    - name: build\n", "    - name: build\n      timeout: 1h\n")  # noqa: E731
    result = assert_follows(TASK, edit)
    assert result is not None
    removed, added, _ = result
    assert removed == [] and added == ["        - --tekton-step-timeout", "        - 1h"]


def test_another_sidecar_image_or_secret_updates_those_lines() -> None:
    patched = patch_text(TASK, OPTS).text
    options = InjectOptions(sidecar_image="registry.example/st@" + NEW_DIGEST, otlp_secret="creds")
    again = patch_text(patched, options)
    removed, added = changed_lines(patched, again.text)
    assert added == ["      image: registry.example/st@" + NEW_DIGEST, "            name: creds"]
    assert len(removed) == 2
    assert again.text == patch_text(TASK, options).text


def test_patched_with_an_older_wrapper_path_is_updated_not_wrapped_twice() -> None:
    options = InjectOptions(wrapper="/opt/tracer/step-tracer")
    patched = patch_text(TASK, options).text
    again = patch_text(patched, OPTS)
    assert again.text == patch_text(TASK, OPTS).text
    assert again.text.count("run-script") == 1 and again.text.count("/opt/tracer") == 0


# --- the corpus ----------------------------------------------------------------------------------------------


def _corpus() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*.yaml") if p.is_file())


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")
@pytest.mark.parametrize("edit", EDITS)
def test_corpus_repatching_follows_every_edit(edit: str) -> None:
    counted: dict[str, Any] = {"files": 0, "max_removed": 0}
    for path in _corpus():
        text = path.read_text(encoding="utf-8")
        try:
            result = assert_follows(text, EDITS[edit], source=path.name)
        except AssertionError as err:
            raise AssertionError(f"{path.relative_to(CORPUS)}: {err}") from None
        if result is None:
            continue
        counted["files"] += 1
        removed, _, pending = result
        counted["max_removed"] = max(counted["max_removed"], len(removed))
        # --check calls it stale exactly when re-patching changes what the first patch wrote
        assert bool(removed) == any(": stale: " in line for line in pending), (path, removed, pending)
        if edit == "digest bump":
            assert len(removed) == 1, (path, removed)
        elif edit in ("step renamed", "StepAction renamed", "timeout added"):
            assert len(removed) <= 2, (path, removed)
    assert counted["files"] >= (3 if edit == "StepAction renamed" else 20), counted
