"""The import graph reads as the data flows: no cycles (function-local imports count), and no layer imports one
above it. grimp builds the graph from the source, without importing the package."""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp")

# top to bottom; a module may import from its own layer (siblings in one row) and any layer below
LAYERS = [
    {"__main__", "cli"},
    {"comparison", "serving", "studies"},
    {"api"},
    {"pipeline"},
    {"ranking", "pretraining"},
    {"tasks"},
    {"bundle", "export"},
    {"strategies"},
    {"engine"},
    {"evaluation"},
    {"data", "backbones", "heads", "datasets"},
    {"io", "rundir", "runfile", "cache", "console", "errors", "(root)"},
]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("transferkit", exclude_type_checking_imports=True)


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_layers_only_import_downwards(graph):
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward = []
    for module in sorted(graph.modules):
        a = _top(module)
        assert a in rank, f"{module}: add its package to LAYERS in {__file__}"
        for imported in graph.find_modules_directly_imported_by(module):
            b = _top(imported)
            if rank[b] < rank[a]:
                upward.append(f"{module} -> {imported}")
    assert upward == []


def test_no_private_names_imported_across_modules(graph):
    """A name with a leading underscore is used only in its own module."""
    found = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            for detail in graph.get_import_details(importer=module, imported=imported):
                names = detail["line_contents"].split(" import ", 1)
                if len(names) == 2 and any(n.strip().startswith("_") and not n.strip().startswith("__")
                                           for n in names[1].replace("(", "").replace(")", "").split(",")):
                    found.append(f"{module}: {detail['line_contents']}")
    assert found == []


def test_the_generic_run_asks_nothing_about_the_data():
    """Modality questions live in the tasks; the pipeline stays a short recipe."""
    import inspect

    import transferkit.pipeline as pipeline

    source = inspect.getsource(pipeline)
    for phrase in ("modality ==", "if medical", 'task == "detect', "isinstance(data"):
        assert phrase not in source
    assert len(inspect.getsource(pipeline.run).splitlines()) <= 80
