"""The engine package's house rules, read from the code: fast, no TensorFlow.

Imports point one way (command line → round trip / preflight / strategies / diagnose /
bench → estimate / storage → checkpoint I/O / pipeline / config → errors / units /
runtime), counting imports inside functions; no cycle; nothing edits sys.path; the product
never imports the tests; the pure parts load without TensorFlow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dlckpt"

# Each room (a folder or top-level module of dlckpt) and the rooms it may import.
LOW = {"errors", "units", "paths", "report", "runtime", "tempdir", "job_env"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "paths": set(),
    "units": {"errors"},
    "report": {"errors", "units"},
    "runtime": {"errors"},
    "tempdir": {"errors", "units"},
    "job_env": {"errors"},
    "config": LOW,
    "pipeline": LOW | {"config"},
    "ckpt_io": LOW | {"pipeline"},
    "estimate": LOW | {"config", "pipeline", "ckpt_io"},
    "storage": LOW | {"config", "ckpt_io"},
    "preflight": LOW | {"config", "estimate", "storage"},
    "roundtrip": LOW | {"config", "pipeline", "ckpt_io", "estimate", "storage", "preflight"},
    "strategies": LOW | {"config", "pipeline", "ckpt_io", "estimate", "roundtrip"},
    "diagnose": LOW | {"config", "preflight"},
    "multihost": LOW | {"config", "pipeline", "estimate", "storage", "roundtrip"},
    "bench": LOW | {"config", "pipeline", "ckpt_io", "estimate", "storage", "preflight",
                    "roundtrip", "diagnose"},
    # The commands (each script's body) sit on top and may use every room below them.
    "cli": LOW | {"config", "pipeline", "ckpt_io", "estimate", "storage", "preflight",
                  "roundtrip", "strategies", "diagnose", "multihost"},
    "__main__": {"cli"},  # python -m dlckpt
}  # fmt: skip
# Modules with no TensorFlow at import, so tests of them (and check_disk_space.sh) stay fast.
PURE = [
    "dlckpt.units",
    "dlckpt.tempdir",
    "dlckpt.job_env",
    "dlckpt.config",
    "dlckpt.estimate.model",
    "dlckpt.preflight.fit",
    "dlckpt.estimate.watchdog",
    "dlckpt.preflight.locations",
    "dlckpt.preflight.disk_check",
    "dlckpt.roundtrip.window",
    "dlckpt.cli.common",
    "dlckpt.cli.main",
    "dlckpt.runtime.environment",
    "dlckpt.runtime.layer",
    "dlckpt.multihost.layout",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every dlckpt module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dlckpt")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlckpt"):
            assert node.module is not None
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m not in (name, "dlckpt")}
        for name, path in modules.items()
    }


def _room(module: str) -> str:
    return module.split(".")[1]


def test_every_import_points_down_the_layers():
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module != "dlckpt"
        for target in targets
        if _room(target) != _room(module) and _room(target) not in ALLOWED[_room(module)]
    ]
    assert wrong == []


def test_no_import_cycle_counting_imports_inside_functions():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("folder", ["dlckpt", "scripts"])
def test_the_product_neither_edits_sys_path_nor_imports_the_tests(folder):
    offenders = []
    for path in (ROOT / folder).rglob("*.py"):
        text = path.read_text()
        if "sys.path.insert" in text or "sys.path.append" in text or "sys.path[" in text:
            offenders.append(f"{path.relative_to(ROOT)} edits sys.path")
        for module in _imports_any(path):
            if module.split(".")[0] in {"tests", "conftest", "user_pipelines"}:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def _imports_any(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_pure_parts_load_without_tensorflow():
    heavy = "('tensorflow', 'numpy')"
    code = (
        f"import sys; import {', '.join(PURE)}; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_scripts_share_a_small_common_module():
    common = ROOT / "scripts" / "tests" / "_common.py"
    assert len(common.read_text().splitlines()) < 80
    for script in (ROOT / "scripts" / "tests").glob("test_dataloader_checkpoint*.py"):
        assert "from _common import" in script.read_text(), script.name
