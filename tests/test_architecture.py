"""The shape of the house, checked on the source text so it cannot drift back.

In the product (rag/, raft/, ui/) and the benchmarks (bench/ and eval/, packages run as `python -m bench.<name>`,
`python -m eval.<name>`):
- no import cycle between the project's modules, counting imports inside functions (a lazy import that
  closes a cycle is still a cycle: it only moves the failure to run time);
- no private name (`_x`) imported from another module;
- no module over 500 lines, and in the product no function over 80;
- no sys.path edits in bench/ or eval/ (their modules import each other as `bench.<name>`, `eval.<name>`);
- no issue numbers in the product's docstrings and comments (the why stays, the history goes to docs/results);
- the index, retrieval and generation take their settings as arguments: they never import rag.config, and
  rag.config imports nothing of ingest (the shared helpers live in rag.common);
- the ONNX decoder engine (rag.generation.decoder) is reached through its package only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("rag", "raft", "ui", "bench", "eval")
MAX_LINES = 500
MAX_FUNCTION_LINES = 80
PRODUCT = ("rag", "raft", "ui")  # the function-length limit is for product code


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, module: str, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import statement anywhere in the file, resolved to project modules."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            # `from rag.generation import teacher` imports the submodule rag.generation.teacher
            subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in known]
            out += [(s, []) for s in subs] or [(node.module, names)]
    return out


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {m: {i for i, _ in _imports(p, m, set(modules)) if i in modules and i != m} for m, p in modules.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_name_crosses_modules() -> None:
    modules = _modules()
    bad = []
    for m, path in modules.items():
        for target, names in _imports(path, m, set(modules)):
            bad += [f"{path.relative_to(ROOT)} imports {target}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_no_module_over_500_lines() -> None:
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def _imports_of(prefix: str) -> list[tuple[str, Path, str]]:
    """(module, its path, imported project module) for every module whose name starts with `prefix`."""
    modules = _modules()
    return [(m, path, target) for m, path in sorted(modules.items()) if m == prefix or m.startswith(prefix + ".")
            for target, _ in _imports(path, m, set(modules))]


def test_answering_reaches_the_index_only_through_retrieval() -> None:
    """rag/answering uses what the Retriever offers (rag/retrieval is the index's public face), never the
    index's own modules: a change of the index's insides cannot break answering."""
    bad = [f"{path.relative_to(ROOT)} imports {target}" for _, path, target in _imports_of("rag.answering")
           if target == "rag.index" or target.startswith("rag.index.")]
    assert not bad, "\n".join(bad)


# The answering's stages in the order an answer flows through them; a stage imports no later one, so no stage
# can call back into what runs it. The composition root (pipeline) comes last.
ANSWERING_FLOW = ("rag.answering.plan", "rag.answering.modes", "rag.answering.finalize", "rag.answering.stream",
                  "rag.answering.pipeline")


def test_answering_flows_one_way() -> None:
    def stage(module: str) -> int | None:
        return next((i for i, s in enumerate(ANSWERING_FLOW) if module == s or module.startswith(s + ".")), None)

    bad = []
    for m, path, target in _imports_of("rag.answering"):
        here, there = stage(m), stage(target)
        if here is not None and there is not None and there > here:
            bad.append(f"{path.relative_to(ROOT)} ({ANSWERING_FLOW[here]}) imports {target}, a later stage")
    assert not bad, "\n".join(bad)


def test_no_function_over_80_lines() -> None:
    """Every function and method of the product, nested ones included, measured from its `def` line to its
    last line (docstring included, decorators not): a longer one is split into steps that return data."""
    long = []
    for name, path in _modules().items():
        if name.split(".")[0] not in PRODUCT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


# The domains below the settings: whoever builds them (rag.api, the CLI, the server, the app, RAFT) reads
# rag.config and passes the values in, so each can be built and tested without the product's settings.
SETTINGS_FREE = ("rag.index", "rag.retrieval", "rag.generation")


def test_index_retrieval_and_generation_never_import_config() -> None:
    bad = [f"{path.relative_to(ROOT)} imports {target}"
           for prefix in SETTINGS_FREE for _, path, target in _imports_of(prefix)
           if target == "rag.config"]
    assert not bad, "\n".join(bad)


def test_config_never_imports_ingest() -> None:
    """The settings read their file with rag.common.text, not with the course loaders."""
    bad = [f"{path.relative_to(ROOT)} imports {target}" for _, path, target in _imports_of("rag.config")
           if target == "rag.ingest" or target.startswith("rag.ingest.")]
    assert not bad, "\n".join(bad)


DECODER = "rag.generation.decoder"


def test_decoder_is_reached_through_its_package() -> None:
    """Outside rag/generation/decoder/, product code, benchmarks and evaluations import `rag.generation.decoder`,
    never one of its modules (its tests may: they test the modules' insides)."""
    bad = []
    for folder in (*PACKAGES, "bench", "eval"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "rag" / "generation" / "decoder"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                bad += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.startswith(DECODER + ".")]
    assert not bad, "\n".join(bad)


def test_benchmarks_are_packages_without_sys_path_edits() -> None:
    for folder in ("bench", "eval"):
        assert (ROOT / folder / "__init__.py").is_file(), folder
    bad = [str(p.relative_to(ROOT)) for folder in ("bench", "eval") for p in (ROOT / folder).glob("*.py")
           if "sys.path" in p.read_text(encoding="utf-8")]
    assert not bad, "edits sys.path: " + ", ".join(bad)


ISSUE = re.compile(r"\bissues? ?#?\d+", re.IGNORECASE)


def test_no_issue_numbers_in_product_code() -> None:
    bad = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for package in ("rag", "raft", "ui")
           for p in sorted((ROOT / package).rglob("*.py"))
           for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if ISSUE.search(line)]
    assert not bad, "\n".join(bad)
