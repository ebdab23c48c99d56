"""The dependency rules of DESIGN.md ("The layout"), checked by parsing every import.

- ``timeline`` imports neither ``hub`` nor ``channels``;
- ``channels`` imports ``timeline.events`` and nothing else of ours but ``config``
  (and itself);
- nothing imports ``hub`` but ``hub`` itself and ``run.py`` (tests and bench are not
  scanned);
- ``config`` imports nothing of ours.

Every ``import``/``from ... import`` counts, wherever it stands (also inside functions
and ``if TYPE_CHECKING:``), relative imports are resolved against the file's package,
and ``importlib.import_module("...")``/``__import__("...")`` with a literal name count
too. A failure names each file, line and forbidden import.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = frozenset({"timeline", "channels", "hub", "config"})
SCANNED = ("timeline", "channels", "hub", "config")


@dataclasses.dataclass(frozen=True)
class Import:
    """One import at a line of a file: ``import module`` or ``from module import names``."""

    line: int
    module: str
    names: tuple[str, ...] = ()


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The dotted module name of a file, and whether it is a package ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _resolve_relative(module: str | None, level: int, current: str, is_package: bool) -> str:
    package = current.split(".") if is_package else current.split(".")[:-1]
    if level - 1 > len(package):
        raise ValueError("relative import beyond the top-level package")
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every import of a file, with absolute dotted module names."""
    current, is_package = _module_name(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(node.module, node.level, current, is_package)
            else:
                base = node.module or ""
            names = tuple(a.name for a in node.names if a.name != "*")
            yield Import(node.lineno, base, names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and _call_name(node)
            in (
                "import_module",
                "__import__",
            )
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield Import(node.lineno, arg.value)


def _forbidden(source_top: str, module: str, *, container: bool = False) -> str | None:
    """Why code in ``source_top`` may not import ``module`` (None if it may).

    ``container``: ``module`` is the ``X`` of ``from X import names``; for ``channels``
    the package ``timeline`` is then judged by the names taken from it.
    """
    top = module.split(".")[0]
    if top not in OURS or top == source_top:
        return None
    if top == "hub" and source_top != "run":
        return "nothing imports hub but hub itself and run.py"
    if source_top == "timeline" and top == "channels":
        return "timeline imports neither hub nor channels"
    if source_top == "config":
        return "config imports nothing of ours"
    if source_top == "channels" and top == "timeline":
        if module == "timeline.events" or module.startswith("timeline.events."):
            return None
        if module == "timeline" and container:
            return None
        return "channels imports only timeline.events (and config) of ours"
    return None


def violations(root: Path) -> list[str]:
    """``path:line: forbidden import X (rule)`` for every broken rule under ``root``."""
    files = [p for d in SCANNED for p in sorted((root / d).rglob("*.py"))]
    if (root / "run.py").exists():
        files.append(root / "run.py")
    found: list[str] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        source_top = path.relative_to(root).parts[0].removesuffix(".py")
        for imp in imports_of(path, root):
            reason = _forbidden(source_top, imp.module, container=bool(imp.names))
            if reason:
                found.append(f"{rel}:{imp.line}: forbidden import {imp.module} ({reason})")
                continue
            for name in imp.names:  # ``from pkg import mod`` imports ``pkg.mod``
                dotted = f"{imp.module}.{name}"
                reason = _forbidden(source_top, dotted)
                if reason:
                    found.append(f"{rel}:{imp.line}: forbidden import {dotted} ({reason})")
    return found


def test_design_dependency_rules_hold() -> None:
    assert (ROOT / "timeline").is_dir() and (ROOT / "channels").is_dir()
    found = violations(ROOT)
    assert not found, "dependency rules of DESIGN.md broken:\n" + "\n".join(found)


def test_every_scanned_file_parses() -> None:
    for directory in SCANNED:
        for path in (ROOT / directory).rglob("*.py"):
            list(imports_of(path, ROOT))


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in SCANNED:
        (root / directory).mkdir(exist_ok=True)
    return root


def test_the_checker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "timeline/__init__.py": "",
            "timeline/good.py": "from timeline.events import Event\nimport sqlalchemy\n",
            "timeline/bad.py": "import os\n\nfrom hub.app import create_app\n",
            "timeline/sub/__init__.py": "",
            "timeline/sub/worse.py": "from ...channels import twilio\n",
            "channels/__init__.py": "",
            "channels/p/__init__.py": "",
            "channels/p/ok.py": (
                "from timeline.events import Event, Identity\n"
                "from timeline import events\n"
                "import timeline.events\n"
                "from config.settings import Settings\n"
                "from channels.p import ok\n"
                "from . import ok as again\n"
                "from ..q import thing\n"
            ),
            "channels/p/bad.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from timeline.records import StoredEvent\n"
                "def f():\n"
                "    from timeline import customers\n"
                "import timeline\n"
            ),
            "channels/p/sneaky.py": (
                "import importlib\nmod = importlib.import_module('hub.workers')\n"
            ),
            "config/__init__.py": "from .settings import load\n",
            "config/settings.py": "from timeline.events import utcnow\n",
            "hub/__init__.py": "from hub import app\nfrom timeline import store\nimport channels\n",
            "run.py": "from hub.app import create_app\nfrom config import load\n",
        },
    )
    found = sorted(violations(root))
    assert found == [
        "channels/p/bad.py:3: forbidden import timeline.records "
        "(channels imports only timeline.events (and config) of ours)",
        "channels/p/bad.py:5: forbidden import timeline.customers "
        "(channels imports only timeline.events (and config) of ours)",
        "channels/p/bad.py:6: forbidden import timeline "
        "(channels imports only timeline.events (and config) of ours)",
        "channels/p/sneaky.py:2: forbidden import hub.workers "
        "(nothing imports hub but hub itself and run.py)",
        "config/settings.py:1: forbidden import timeline.events (config imports nothing of ours)",
        "timeline/bad.py:3: forbidden import hub.app "
        "(nothing imports hub but hub itself and run.py)",
        "timeline/sub/worse.py:1: forbidden import channels "
        "(timeline imports neither hub nor channels)",
    ]


@pytest.mark.parametrize(
    ("module", "level", "current", "is_package", "expected"),
    [
        ("x", 1, "channels.p.mod", False, "channels.p.x"),
        (None, 1, "channels.p.mod", False, "channels.p"),
        ("q", 2, "channels.p.mod", False, "channels.q"),
        ("x", 1, "channels.p", True, "channels.p.x"),
        ("channels", 3, "timeline.sub.worse", False, "channels"),
    ],
)
def test_relative_imports_resolve(
    module: str | None, level: int, current: str, is_package: bool, expected: str
) -> None:
    assert _resolve_relative(module, level, current, is_package) == expected
