"""inject_paths: files, directories, stdin; print, --write, --check, --diff; exit codes."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from step_tracer.inject import InjectOptions, inject_paths, patch_text

OPTS = InjectOptions()
W = "/step-tracer/bin/step-tracer"

TASK = (
    "apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n"
    "  steps:\n    - name: s\n      image: a\n      script: |\n        echo\n"
)
EP_TASK = (
    "apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: ep\nspec:\n  steps:\n    - name: e\n      image: a\n"
)


def run(
    paths: list[str], *, write: bool = False, check: bool = False, diff: bool = False, stdin: str = ""
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = inject_paths(
        paths, write=write, out=out, check=check, diff=diff, options=OPTS, err=err, stdin=io.StringIO(stdin)
    )
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "a.yaml").write_text(TASK.format(name="a"))
    (tmp_path / "sub" / ".tekton").mkdir(parents=True)
    (tmp_path / "sub" / ".tekton" / "b.yml").write_text(TASK.format(name="b"))
    (tmp_path / "sub" / "c.json").write_text(json.dumps({"kind": "ConfigMap", "data": {"x": "y"}}, indent=2))
    (tmp_path / "sub" / "notes.txt").write_text("not yaml: [")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.yaml").write_text("broken: [")
    return tmp_path


def test_prints_patched_files_to_out_separated_as_documents(tree: Path) -> None:
    code, out, err = run([str(tree)])
    assert code == 0 and err == ""
    docs = out.split("---\n")
    assert len(docs) == 3
    assert docs[0] == patch_text(TASK.format(name="a"), OPTS).text
    assert docs[1] == patch_text(TASK.format(name="b"), OPTS).text
    assert json.loads(docs[2]) == {"kind": "ConfigMap", "data": {"x": "y"}}
    assert (tree / "a.yaml").read_text() == TASK.format(name="a")  # nothing written


def test_write_rewrites_changed_files_only(tree: Path) -> None:
    unchanged = tree / "sub" / "c.json"
    before = unchanged.stat()
    os.chmod(tree / "a.yaml", 0o640)
    code, out, err = run([str(tree)], write=True)
    assert (code, out, err) == (0, "", "")
    assert (tree / "a.yaml").read_text() == patch_text(TASK.format(name="a"), OPTS).text
    assert (tree / "a.yaml").stat().st_mode & 0o777 == 0o640
    assert f"#!{W} run-script" in (tree / "sub" / ".tekton" / "b.yml").read_text()
    after = unchanged.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in tree.rglob("*.tmp")) == []
    assert run([str(tree)], write=True)[0] == 0
    assert run([str(tree)], check=True)[:2] == (0, "")


def test_write_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_text(TASK.format(name="r"))
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert run([str(link)], write=True)[0] == 0
    assert link.is_symlink() and "step-tracer" in target.read_text()


def test_check_lists_every_uninstrumented_step_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(TASK.format(name="t"))
    (tmp_path / "ep.yaml").write_text(EP_TASK)
    code, out, err = run([str(tmp_path)], check=True)
    assert code == 1
    ep, t = str(tmp_path / "ep.yaml"), str(tmp_path / "t.yaml")
    assert out.splitlines() == [
        f"{ep}: Task/ep: step e: not instrumented, cannot be wrapped: runs its image ENTRYPOINT, which is unknown "
        "without an entrypoint lookup",
        f"{ep}: Task/ep: step-tracer volumes, mounts or sidecar missing",
        f"{t}: Task/t: step s: not instrumented",
        f"{t}: Task/t: step-tracer volumes, mounts or sidecar missing",
    ]
    assert "warning:" in err
    assert (tmp_path / "t.yaml").read_text() == TASK.format(name="t")
    run([str(tmp_path)], write=True)
    code, out, _ = run([str(tmp_path)], check=True)
    assert code == 1 and out.splitlines() == [
        f"{ep}: Task/ep: step e: not instrumented, cannot be wrapped: runs its image ENTRYPOINT, which is unknown "
        "without an entrypoint lookup"
    ]
    (tmp_path / "ep.yaml").unlink()
    assert run([str(tmp_path)], check=True)[:2] == (0, "")


def test_diff_shows_the_change_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(TASK.format(name="t"))
    code, out, _ = run([str(path)], diff=True)
    assert code == 0
    assert out.startswith(f"--- a/{path}\n+++ b/{path}\n@@ ")
    added = [line for line in out.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in out.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert removed == [] and f"+        #!{W} run-script --tekton-step=s --tekton-step-index=0" in added
    assert path.read_text() == TASK.format(name="t")
    patched = tmp_path / "p.yaml"
    patched.write_text(patch_text(TASK.format(name="t"), OPTS).text)
    assert run([str(patched)], diff=True)[:2] == (0, "")


def test_stdin_and_write_to_stdout() -> None:
    code, out, _ = run(["-"], write=True, stdin=TASK.format(name="in"))
    assert code == 0 and out == patch_text(TASK.format(name="in"), OPTS).text
    code, out, _ = run(
        ["-"],
        stdin=json.dumps(
            {
                "apiVersion": "tekton.dev/v1beta1",
                "kind": "StepAction",
                "metadata": {"name": "a"},
                "spec": {"image": "x", "command": ["y"]},
            }
        ),
    )
    assert json.loads(out)["spec"]["command"][0] == W


def test_errors_exit_2_but_other_files_are_processed(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(TASK.format(name="g"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    clash = tmp_path / "clash.yaml"
    clash.write_text(
        TASK.format(name="c").replace(
            "spec:\n",
            "spec:\n  stepTemplate:\n    volumeMounts:\n      - name: mine\n        mountPath: /step-tracer/spool\n",
        )
    )
    code, out, err = run([str(bad), str(clash), str(good), str(tmp_path / "missing.yaml")], write=True)
    assert code == 2 and out == ""
    assert f"error: {bad}: invalid YAML" in err
    assert f"error: {clash}: Task/c: " in err and "volumeMounts entry 'mine' sits at /step-tracer/spool" in err
    assert f"error: {tmp_path / 'missing.yaml'}:" in err
    assert "step-tracer" in good.read_text()
    assert clash.read_text().count("step-tracer") == 1


def test_unparsable_files_found_in_directories_are_skipped(tree: Path) -> None:
    (tree / "sub" / "broken.yaml").write_text("a: [\n")
    code, _, err = run([str(tree)], check=True)
    assert code == 1
    assert f"warning: {tree / 'sub' / 'broken.yaml'}: skipped, invalid YAML" in err
    assert ".git" not in err


def test_no_inputs_and_empty_directories(tmp_path: Path) -> None:
    assert run([])[0] == 2
    code, out, err = run([str(tmp_path)])
    assert (code, out) == (0, "") and "no *.yaml" in err
