"""`step-tracer show` on a real terminal: tmux gives the command a pty of a known size, and its screen is read back.

Deterministic without sleeping: the pane's shell signals a tmux wait-for channel once the command has exited, and
the test blocks on that channel before it captures the screen.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.show.test_show import GOLDEN_80, pipeline_run, write_lines

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (CI installs it)")

LAUNCHER = str(Path(sys.executable).parent / "step-tracer")


def on_terminal(tmp_path: Path, width: int, *, env: str = "") -> tuple[str, str]:
    """The screen after `show` ran in a width x 40 tmux pane: (text, text with tmux's rendering of the colours)."""
    spans = write_lines(tmp_path / "spans.jsonl", pipeline_run())
    socket = tmp_path / "tmux.sock"
    tmux = ["tmux", "-S", str(socket), "-f", "/dev/null"]
    script = (
        f"env {env} {shlex.quote(LAUNCHER)} show {shlex.quote(str(spans))}; "
        f"tmux -S {shlex.quote(str(socket))} wait-for -S shown; exec cat"  # cat keeps the pane (and screen) open
    )
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "TERM": "xterm-256color"}
    subprocess.run([*tmux, "new-session", "-d", "-x", str(width), "-y", "40", script], env=clean, check=True)
    try:
        subprocess.run([*tmux, "wait-for", "shown"], env=clean, check=True, timeout=60)
        text = subprocess.run([*tmux, "capture-pane", "-p"], env=clean, check=True, capture_output=True, text=True)
        escaped = subprocess.run([*tmux, "capture-pane", "-p", "-e"], env=clean, check=True, capture_output=True)
    finally:
        subprocess.run([*tmux, "kill-server"], env=clean, check=False, capture_output=True)
    return text.stdout.rstrip("\n") + "\n", escaped.stdout.decode()


def test_on_an_80_column_terminal_the_waterfall_fills_it_in_colour(tmp_path: Path) -> None:
    text, escaped = on_terminal(tmp_path, 80)

    assert text == GOLDEN_80  # the same rows as the plain golden text, fitted to the terminal's 80 columns
    assert "\x1b[31m✗" in escaped and "\x1b[32m✓" in escaped  # failures red, successes green
    assert "\x1b[31mfailure" in escaped


def test_a_wider_terminal_gets_longer_bars_and_whole_names(tmp_path: Path) -> None:
    text, _ = on_terminal(tmp_path, 150)

    lines = text.splitlines()
    assert max(len(line) for line in lines) == 150
    assert any("build-and-push-an-image-with-a-very-long-name  failure" in line for line in lines)


def test_no_color_on_a_terminal_is_plain(tmp_path: Path) -> None:
    text, escaped = on_terminal(tmp_path, 80, env="NO_COLOR=1")

    assert text == GOLDEN_80
    assert "\x1b[3" not in escaped
