"""No import cycle in cccdask: every module imports first in a fresh interpreter, in any order.

Two checks. The import graph of the package (every ``import`` statement of every module,
also those inside functions) has no cycle. And every module imports as the first
cccdask module of a fresh interpreter, followed by all the others in sorted order (and
all in reverse order once): a cycle that only some orders trip over fails here. The interpreter
is started once with the third-party dependencies loaded; each order then runs in a
forked child that has not imported any cccdask module.
"""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cccdask

PACKAGE = Path(cccdask.__file__).parent
# the command line entry point runs the CLI when imported
ENTRY_POINTS = {"cccdask.__main__"}


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return [n for n in names if n not in ENTRY_POINTS]


def _source(module: str) -> Path:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(module: str, modules: set[str]) -> set[str]:
    """The cccdask modules that ``module`` imports anywhere in its source."""
    package = module if _source(module).name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(_source(module).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules and name != module}


def test_the_import_graph_of_cccdask_has_no_cycle():
    modules = set(_modules())
    graph = {module: _imports(module, modules) for module in modules}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycle = path[path.index(imported):] + [imported]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, path + [imported])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    assert len(state) == len(modules) > 30


def test_every_module_imports_first_in_a_fresh_interpreter():
    modules = _modules()
    orders = [[first] + [m for m in modules if m != first] for first in modules]
    orders.append(modules[::-1])
    script = textwrap.dedent(
        """
        import importlib, json, os, sys
        orders = json.loads(sys.stdin.read())
        # load the third-party modules cccdask uses (learnt in a throwaway child), not cccdask itself
        read, write = os.pipe()
        if os.fork() == 0:
            for module in orders[0]:
                importlib.import_module(module)
            os.write(write, json.dumps([m for m in sys.modules if m.split(".")[0] != "cccdask"]).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            third_party = json.loads(pipe.read())
        os.wait()
        for module in third_party:
            try:
                importlib.import_module(module)
            except Exception:  # a module that only its own package may import: loaded with it
                pass
        assert not [m for m in sys.modules if m.split(".")[0] == "cccdask"]
        failures = []
        for order in orders:
            child = os.fork()
            if child == 0:
                try:
                    for module in order:
                        importlib.import_module(module)
                except BaseException as error:
                    print(f"{order[0]} first: {module}: {type(error).__name__}: {error}", flush=True)
                    os._exit(1)
                os._exit(0)
            _, status = os.waitpid(child, 0)
            if status != 0:
                failures.append(order[0])
        print("FAILED", failures)
        sys.exit(1 if failures else 0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(orders), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(orders) == len(modules) + 1
