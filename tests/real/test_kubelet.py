"""The kubelet pieces the process kubelet (podrunner.py) uses: the wrapper and the sidecar parse what they write,
so each must write what the kubelet writes. Expected values come from the kubelet's code (cited in kubelet.py)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.real.kubelet import expand, field_value, format_map, go_quote, write_volume


def test_go_quote_is_strconv_quote() -> None:
    cases = {
        "plain": '"plain"',
        'a "quoted" \\ value': '"a \\"quoted\\" \\\\ value"',
        "\a\b\f\n\r\t\v": '"\\a\\b\\f\\n\\r\\t\\v"',
        "\x00\x01\x1f\x7f": '"\\x00\\x01\\x1f\\x7f"',
        "é 😀 ü": '"é 😀 ü"',
        "\u00a0\u200b\u2028\ufeff": '"\\u00a0\\u200b\\u2028\\ufeff"',
        "\U000e0001": '"\\U000e0001"',
    }
    assert {value: go_quote(value) for value in cases} == cases


def test_labels_and_annotations_are_in_fieldpath_format() -> None:
    meta: dict[str, object] = {
        "name": "build-1-pod",
        "labels": {"team": 'a "quoted" \\ value', "app": "x"},
        "annotations": {"note": "line1\nline2"},
    }
    assert format_map({"b": "2", "a": "1"}) == 'a="1"\nb="2"'
    assert field_value("metadata.labels", meta) == 'app="x"\nteam="a \\"quoted\\" \\\\ value"'
    assert field_value("metadata.annotations", meta) == 'note="line1\\nline2"'
    assert field_value("metadata.labels['app']", meta) == "x"
    assert field_value("metadata.name", meta) == "build-1-pod"


def test_a_volume_update_swaps_data_atomically(tmp_path: Path) -> None:
    """AtomicWriter's layout: stable symlinks into ..data, itself a symlink to the current timestamped copy,
    the old copy gone after an update."""
    write_volume(tmp_path, {"labels": b"a", "annotations": b""})
    first = os.readlink(tmp_path / "..data")
    write_volume(tmp_path, {"labels": b"a", "annotations": b'tekton.dev/ready="READY"'})
    second = os.readlink(tmp_path / "..data")
    assert first != second and first.startswith("..") and second.startswith("..")
    assert not (tmp_path / first).exists()
    assert os.readlink(tmp_path / "annotations") == "..data/annotations"
    assert (tmp_path / "annotations").read_text() == 'tekton.dev/ready="READY"'


def test_expand_is_the_kubelets_dollar_expansion() -> None:
    env = {"A": "expanded", "B": "$(A)"}
    assert expand("$$ $(A) $(B) $(C) $$(A) $x $( $", env) == "$ expanded $(A) $(C) $(A) $x $( $"
