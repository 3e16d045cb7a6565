"""The README's two set-up commands stay true: CI runs the second one verbatim."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)[:2]


def test_ci_runs_the_readme_test_command_verbatim():
    _, test_command = readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_readme_starts_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    first, second = readme_commands()
    assert text.index(first) < text.index(second) < text.index("**quweit**")
    assert "quweit-convert" in first and "pytest" in second
