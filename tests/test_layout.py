"""The code's shape, checked: who may import discord.py, no import circles, sizes a reader can
hold (STYLE.md 8), and pure modules that import without discord.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "bot"
MODULES = sorted(BOT.rglob("*.py"))

# About 400 lines a module, 250 a class, 60 a function (STYLE.md 8).
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 400, 250, 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # typing-only imports are not run
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_only_the_discord_layer_imports_discord() -> None:
    offenders = [
        module_name(path)
        for path in MODULES
        if not module_name(path).startswith("bot.discord")
        and any(name == "discord" or name.startswith("discord.") for name in imports_of(path))
    ]
    assert offenders == []


def test_no_import_circles() -> None:
    names = {module_name(path) for path in MODULES}
    graph = {
        module_name(path): {n for n in imports_of(path) if n in names and n != module_name(path)}
        for path in MODULES
    }
    # A package imports its own modules to re-export them: that edge is not a circle.
    for name in graph:
        graph[name] = {n for n in graph[name] if not n.startswith(f"{name}.")}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)
    assert cycles == []


def test_sizes_a_reader_can_hold() -> None:
    too_big = []
    for path in MODULES:
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE:
            too_big.append(f"{module_name(path)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            limit = None
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_FUNCTION
            if limit is not None and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > limit:
                    too_big.append(f"{module_name(path)}.{node.name}: {size} lines")
    assert too_big == []


@pytest.mark.parametrize(
    "module",
    ["bot", "bot.splitter", "bot.chat_engine", "bot.app", "bot.console", "bot.settings"],
)
def test_pure_and_core_modules_import_without_discord(module: str) -> None:
    code = f"import sys, {module}; sys.exit('discord' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False)
    assert done.returncode == 0, f"importing {module} imported discord.py"
