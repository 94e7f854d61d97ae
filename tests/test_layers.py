"""Dependencies point one way (shared/DESIGN.md): protocol -> session -> planner -> {hot, cold}
-> storage. Read from each module's import statements, so a new import that crosses a layer
fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fig_server"
# layer -> fig_server subpackages (besides itself and SHARED) it may import
ALLOWED = {
    "planner": set(),
    "hot": set(),
    "cold": {"storage"},
    "storage": set(),
    "cdc": {"storage"},
    # the session runs a plan: the planner's parts on the cold engine, the rest on hot
    "session": {"planner", "hot", "cold", "storage"},
    # the metrics endpoint reads the hot Postgres with its own connection
    "dashboard": set(),
}


def imports_of(path: Path) -> set[str]:
    """Top-level names imported: `fig_server.x` as "x", other packages by their root."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            found.add(parts[1] if parts[0] == "fig_server" and len(parts) > 1 else parts[0])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    layers = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        crossing = (imports_of(path) & (layers | {"cli", "demo"})) - ALLOWED[layer] - {layer}
        assert not crossing, f"{path.relative_to(PACKAGE)} imports {sorted(crossing)}"


def test_hot_and_cold_never_import_each_other() -> None:
    for one, other in (("hot", "cold"), ("cold", "hot")):
        for path in (PACKAGE / one).rglob("*.py"):
            assert other not in imports_of(path), path


def test_protocol_messages_know_no_sql() -> None:
    """The byte-level protocol code never parses SQL."""
    for path in (PACKAGE / "protocol").rglob("*.py"):
        assert "sqlglot" not in imports_of(path), path
    assert "sqlglot" not in imports_of(PACKAGE / "wire.py")
