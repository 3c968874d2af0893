"""The shape of the package: data flows one way, and nothing below the `Distiller` reaches up to it."""

import ast
from pathlib import Path

import hf_sfm

PACKAGE = Path(hf_sfm.__file__).parent
# Modules allowed to import the Distiller: the package's front door and the embedded default that drives it.
DISTILLER_USERS = {"hf_sfm", "hf_sfm.demo"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The hf_sfm modules `path` imports, at any level of the file (type-checking and function-local included)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found |= {name for name in [target, *names] if name.startswith("hf_sfm")}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("hf_sfm")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py") if "metrics" not in path.parts}
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target in _imports(path) if target in modules and target != name}
    return graph


def test_nothing_below_the_distiller_imports_it():
    importers = {module for module, targets in _graph().items() if "hf_sfm.distiller" in targets}
    assert importers <= DISTILLER_USERS, importers - DISTILLER_USERS
    methods_and_inheritance = [
        module for module in _graph() if module.startswith("hf_sfm.methods") or module == "hf_sfm.inheritance"
    ]
    assert methods_and_inheritance and not importers & set(methods_and_inheritance)


def test_the_import_graph_has_no_circle():
    graph = _graph()
    graph = {module: targets - {"hf_sfm"} for module, targets in graph.items() if module != "hf_sfm"}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in graph.get(module, ()):
            parent = target
            while parent not in graph and "." in parent:  # a submodule's package stands for it
                parent = parent.rsplit(".", 1)[0]
            if state.get(parent) == "open" and parent != module and not module.startswith(parent + "."):
                raise AssertionError(f"import circle: {' -> '.join([*path, parent])}")
            if parent not in state:
                visit(parent, [*path, parent])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_method_registry_is_the_one_list_of_method_names():
    from hf_sfm.config import DistillationConfig
    from hf_sfm.methods import METHODS

    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and node.elts:
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                assert len(names & set(METHODS)) < 2, f"{path.name}:{node.lineno} lists method names {names}"
    for name in METHODS:
        assert DistillationConfig(method=name).method == name


# The package's layers, lowest first: a module may import only from its own layer's package or a lower layer.
LAYERS = [
    {"utils", "modeling_inherited", "methods"},
    {"data", "synthesis", "assets"},
    {"backbone"},
    {"evaluation"},
    {"inheritance", "publishing"},
    {"training", "config"},
    {"distiller"},
    {"demo", "hf_sfm"},
]


def _layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "hf_sfm"
    return top, next(index for index, layer in enumerate(LAYERS) if top in layer)


def test_every_import_points_down_the_layers():
    upward = []
    for module, targets in _graph().items():
        top, level = _layer_of(module)
        for target in targets:
            target_top, target_level = _layer_of(target)
            if target_top != top and target_level >= level:
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_the_public_names_still_import_from_the_package_root():
    for name in hf_sfm.__all__:
        assert getattr(hf_sfm, name) is not None
    from hf_sfm.evaluation import ProbeConfig, ProbeEvaluator

    assert ProbeConfig is hf_sfm.ProbeConfig and ProbeEvaluator is hf_sfm.ProbeEvaluator
