"""The house rules of docs/architecture.md, read from the code itself.

Every import of every project module is read with `ast`, the lazy ones inside
functions included (and those under `if TYPE_CHECKING:`: a rule holds for the
reader of the code, not only for the interpreter). Run it as a script to list
every violation at once: `python tests/test_import_rules.py`.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The project's packages; `run_stream_processing` is the console entry.
PACKAGES = ("aws", "config", "consumers", "daemon", "observability", "optimizely_integration", "producers",
            "resilience", "service", "streams")
ENTRY_MODULES = ("run_stream_processing",)

# Packages that import nothing else of the project: anyone may use them.
LEAVES = ("streams", "aws", "resilience")

# The CLI is the top of the house: only the entry script (and the CLI's own
# package modules that it loads explicitly) may import it.
CLI_MODULE = "daemon.cli"
CLI_IMPORTERS = ("run_stream_processing", "daemon.__main__")

# Concrete adapters: chosen and built only by the composition root (config/),
# and otherwise imported only inside their own package.
ADAPTERS = (
    "consumers.sqlite_count_store",
    "consumers.dynamodb_count_store",
    "consumers.local_object_store",
    "consumers.s3_object_store",
    "consumers.dead_letter_file",
    "producers.spool",
    "producers.console",
    "producers.mp_queue",
    "producers.kinesis_reader",
    "producers.kinesis_shard_poller",
    "producers.kinesis_shard_set",
    "producers.kinesis_lease_coordinator",
    "producers.kinesis_writer",
    "producers.sqs_writer",
    "producers.sqs_reader",
    "producers.file_source",
    "producers.random_source",
    "optimizely_integration.bulk_sink",
)
COMPOSITION_ROOT = "config"

# Only the composition root and the CLI entry touch `inject`.
INJECT_USERS = ("config", CLI_MODULE)

# Nothing else reads configuration: the root hands every other package typed
# settings of its own (service.settings, aws.settings, ...), built in config/.
CONFIG_READERS = (COMPOSITION_ROOT, "daemon")


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    for name in ENTRY_MODULES:
        if (ROOT / f"{name}.py").is_file():
            modules[name] = ROOT / f"{name}.py"
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` refers to (a module, or a package's
    `__init__`), or None for a third-party import."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `module` imports, anywhere in its body."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod when there is one
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names = [node.args[0].value]  # importlib.import_module("pkg.mod")
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def inject_users(modules: dict[str, Path]) -> set[str]:
    users = set()
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import) and any(a.name == "inject" for a in node.names):
                users.add(module)
            elif isinstance(node, ast.ImportFrom) and node.module == "inject":
                users.add(module)
    return users


def package_of(module: str) -> str:
    return module.split(".")[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def violations() -> list[str]:
    modules = project_modules()
    graph = {module: imports_of(module, path, modules) for module, path in modules.items()}
    found: list[str] = []

    for component in _cycles(graph):
        found.append(f"module import cycle: {' <-> '.join(component)}")

    packages: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], str] = {}
    for module, targets in graph.items():
        for target in targets:
            if package_of(module) != package_of(target):
                packages[package_of(module)].add(package_of(target))
                why.setdefault((package_of(module), package_of(target)), f"{module} -> {target}")
    for component in _cycles(packages):
        edges = [why[(a, b)] for a in component for b in component if (a, b) in why]
        found.append(f"package import cycle: {' <-> '.join(component)} ({'; '.join(edges)})")

    for module, targets in sorted(graph.items()):
        package = package_of(module)
        for target in sorted(targets):
            other = package_of(target)
            if package in LEAVES and other != package:
                found.append(f"{module} -> {target}: {package}/ imports nothing else of the project")
            if {package, other} == {"producers", "consumers"}:
                found.append(f"{module} -> {target}: producers/ and consumers/ never import each other")
            if target == CLI_MODULE and module not in CLI_IMPORTERS:
                found.append(f"{module} -> {target}: nothing imports the CLI")
            if other == COMPOSITION_ROOT and package not in CONFIG_READERS:
                found.append(f"{module} -> {target}: only {COMPOSITION_ROOT}/ itself and daemon/ read configuration; "
                             f"{package}/ is handed typed settings")
            if target in ADAPTERS and package not in (COMPOSITION_ROOT, other):
                found.append(f"{module} -> {target}: a concrete adapter is built by the composition root "
                             f"({COMPOSITION_ROOT}/) and imported only there and in its own package")

    for module in sorted(inject_users(modules)):
        if module != CLI_MODULE and package_of(module) not in INJECT_USERS:
            found.append(f"{module} imports inject: only the composition root and the CLI entry do")
    return found


def test_the_house_rules_hold():
    found = violations()
    assert not found, "\n".join(found)


def test_the_rules_see_lazy_imports(tmp_path):
    """The reader itself: a lazy import inside a function counts."""
    path = tmp_path / "lazy.py"
    path.write_text("def f():\n    from streams.windowing import TumblingWindower\n    import consumers.ports\n")
    modules = {"streams.windowing": Path("x"), "consumers.ports": Path("y"), "lazy": path}
    assert imports_of("lazy", path, modules) == {"streams.windowing", "consumers.ports"}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


if __name__ == "__main__":
    listed = violations()
    print("\n".join(listed) or "no violations")
    sys.exit(1 if listed else 0)
