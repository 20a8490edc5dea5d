"""The Tekton resources we ship in tekton/ pass the patcher's own validation and patch cleanly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from step_tracer.inject import InjectOptions, patch_text, validate_document

TEKTON = Path(__file__).resolve().parents[2] / "tekton"
FILES = sorted(TEKTON.rglob("*.yaml"))


def test_there_are_resources_to_check() -> None:
    names = {p.name for p in FILES}
    assert {"task-inject.yaml", "task-patch-bundle.yaml", "pipeline-example.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(TEKTON)))
def test_validates_and_patches(path: Path) -> None:
    text = path.read_text()
    for doc in YAML(typ="safe").load_all(text):
        assert validate_document(doc, str(path)) == []
    patched = patch_text(text, InjectOptions(), source=str(path))
    for doc in YAML(typ="safe").load_all(patched.text):
        assert validate_document(doc, str(path)) == []
    assert patch_text(patched.text, InjectOptions()).text == patched.text


@pytest.mark.parametrize("path", [p for p in FILES if p.name.startswith("task-")], ids=lambda p: p.name)
def test_every_param_and_result_used_is_declared(path: Path) -> None:
    task = YAML(typ="safe").load(path.read_text())
    params = {p["name"] for p in task["spec"].get("params", [])}
    results = {r["name"] for r in task["spec"].get("results", [])}
    workspaces = {w["name"] for w in task["spec"].get("workspaces", [])}
    text = path.read_text()
    assert set(re.findall(r"\$\(params\.([\w-]+)", text)) <= params
    assert set(re.findall(r"\$\(results\.([\w-]+)", text)) <= results
    assert set(re.findall(r"\$\(workspaces\.([\w-]+)", text)) <= workspaces
