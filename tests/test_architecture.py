"""The import graph holds the layout the README describes.

Three layers: the kit (root modules every domain may use: config, db, errors, ...),
the domains (one folder each), and the entry points that assemble processes
(main, cli, worker, runtime, health, models). Domains never import an entry
point, the kit never imports a domain, and the domains' own graph has no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
ENTRY_POINTS = {
    "app.__main__",
    "app.cli",
    "app.health",
    "app.main",
    "app.models",
    "app.runtime",
    "app.worker",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every `app.*` module the file imports, at any depth (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "app" or name.startswith("app.")}


GRAPH = {module_name(path): imports_of(path) for path in APP.rglob("*.py")}


def domain_of(module: str) -> str | None:
    """The domain folder a module belongs to (None for root modules)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (APP / parts[1]).is_dir() else None


def test_the_graph_covers_every_domain() -> None:
    domains = {domain_of(m) for m in GRAPH} - {None}
    assert {"auth", "connections", "inbox", "ingress", "vault", "telegram"} <= domains


def test_no_domain_imports_an_entry_point() -> None:
    offending = {
        (module, imported)
        for module, imported_modules in GRAPH.items()
        if domain_of(module) is not None
        for imported in imported_modules
        if imported in ENTRY_POINTS
    }
    assert offending == set()


def test_the_kit_imports_no_domain_and_no_entry_point() -> None:
    kit = {m for m in GRAPH if domain_of(m) is None and m not in ENTRY_POINTS and m != "app"}
    offending = {
        (module, imported)
        for module in kit
        for imported in GRAPH[module]
        if imported in ENTRY_POINTS or domain_of(imported) is not None
    }
    assert offending == set()


def test_the_domains_import_each_other_without_a_cycle() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imported_modules in GRAPH.items():
        source = domain_of(module)
        if source is None:
            continue
        for imported in imported_modules:
            target = domain_of(imported)
            if target is not None and target != source:
                edges[source].add(target)

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for target in sorted(edges[path[-1]]):
            if target == start:
                return [*path, start]
            if target not in path:
                found = cycle_from(start, [*path, target])
                if found:
                    return found
        return None

    cycles = [c for domain in sorted(edges) if (c := cycle_from(domain, [domain]))]
    assert cycles == []
