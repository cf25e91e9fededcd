"""Imports inside drdet point down the layers: a module may import its own package or a package
of a lower layer, never one of its own layer or above (read with `ast`, function-level imports
included, so that no import cycle or upward dependency hides in a function body)."""

import ast
import os
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "drdet")

# Lower numbers are lower layers. config sits below the model: the parts declare their config
# nodes and checks to it (drdet/__init__.py tells it, through drdet.utils.registry, which
# packages register the built-in parts); checkpoint converts weights with the backbone's own
# conversion.
LAYERS: dict[str, int] = {
    "_C": 0,  # the compiled extension
    "utils": 0,
    "config": 1,
    "structures": 2,
    "layers": 2,
    "modeling": 3,
    "data": 3,
    "solver": 3,
    "evaluation": 3,
    "checkpoint": 4,
    "export": 5,  # loads a checkpoint into a model; the engine runs what it exports
    "engine": 6,
    "": 7,  # drdet/__init__.py and top-level modules of drdet
}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def drdet_imports(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import of a drdet module in `source` (the text of
    `module`), relative imports resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
            if names == ["drdet"]:  # from drdet import layers: the submodules
                names = [f"drdet.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "drdet" or name.startswith("drdet."):
                yield node.lineno, name


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def upward_imports(source: str, module: str, is_package: bool) -> list[str]:
    """'module:line imports target' for each import of `module` that does not point down."""
    own = _package_of(module)
    bad = []
    for line, target in drdet_imports(source, module, is_package):
        other = _package_of(target)
        if other != own and LAYERS[other] >= LAYERS[own]:
            bad.append(f"{module}:{line} imports {target}")
    return bad


def _sources() -> Iterator[tuple[str, str, bool]]:
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    yield f.read(), _module_name(path), name == "__init__.py"


def test_every_package_has_a_layer():
    packages = {
        entry
        for entry in os.listdir(PACKAGE)
        if os.path.isfile(os.path.join(PACKAGE, entry, "__init__.py"))
    }
    assert packages <= set(LAYERS), f"place the new packages in LAYERS: {packages - set(LAYERS)}"


def test_imports_point_down_the_layers():
    bad = [
        b for source, module, is_pkg in _sources() for b in upward_imports(source, module, is_pkg)
    ]
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "module,source,expected",
    [
        (
            "drdet.utils.visualize",
            "def f():\n    from drdet.data.catalog import get_dataset\n",
            ["drdet.utils.visualize:2 imports drdet.data.catalog"],
        ),
        (
            "drdet.modeling.build",
            "import drdet.engine.trainer as t\n",
            ["drdet.modeling.build:1 imports drdet.engine.trainer"],
        ),
        (
            "drdet.config.schema",
            "def f():\n    import drdet.modeling\n",
            ["drdet.config.schema:2 imports drdet.modeling"],
        ),
        (
            "drdet.data.build",
            "from drdet.modeling import build_detector\n",  # same layer
            ["drdet.data.build:1 imports drdet.modeling"],
        ),
        (
            "drdet.utils.io",
            "from ..engine import defaults\n",
            ["drdet.utils.io:1 imports drdet.engine"],
        ),
        (
            "drdet.layers.nms",
            "from drdet import modeling\n",
            ["drdet.layers.nms:1 imports drdet.modeling"],
        ),
        (
            "drdet.engine.trainer",
            "from drdet.checkpoint import Checkpointer\nfrom . import hooks\n",
            [],
        ),
        ("drdet.layers._ext", "from drdet import _C\n", []),
    ],
)
def test_the_checker_flags_upward_and_sideways_imports(module, source, expected):
    assert upward_imports(source, module, is_package=False) == expected


# ---------------------------------------------------------------- detectors as siblings
MODELING = os.path.join(PACKAGE, "modeling")


def _registers_a_detector(package: str) -> bool:
    folder = os.path.join(MODELING, package)
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                if "META_ARCHITECTURES.register(" in f.read():
                    return True
    return False


# A detector package: a package of drdet/modeling that registers a meta-architecture.
DETECTORS = sorted(entry for entry in os.listdir(MODELING) if _registers_a_detector(entry))


def test_the_detectors_are_found():
    assert {"retinanet", "fcos", "atss"} <= set(DETECTORS)


def _package_files(package: str) -> Iterator[tuple[str, str]]:
    folder = os.path.join(MODELING, package)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                yield f"drdet/modeling/{package}/{name}", f.read()


def detector_imports(package: str) -> list[str]:
    """'file:line imports X' for each import of another detector package by ``package``."""
    bad = []
    for path, source in _package_files(package):
        module = path[: -len(".py")].replace("/", ".")
        for line, target in drdet_imports(source, module, path.endswith("__init__.py")):
            parts = target.split(".")
            if len(parts) > 2 and parts[1] == "modeling" and parts[2] in DETECTORS:
                if parts[2] != package:
                    bad.append(f"{path}:{line} imports {target}")
    return bad


@pytest.mark.parametrize("package", DETECTORS)
def test_a_detector_imports_no_other_detector(package):
    bad = detector_imports(package)
    assert not bad, "a detector imports another detector:\n" + "\n".join(bad)


def _node_reads(source: str) -> Iterator[tuple[int, str]]:
    """(line, NODE) of each ``<...>.MODEL.NODE`` attribute read in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "MODEL"
        ):
            yield node.lineno, node.attr


@pytest.mark.parametrize("package", DETECTORS)
def test_only_a_detector_reads_its_own_config_node(package):
    """Nothing outside drdet/modeling/<detector>/ reads MODEL.<DETECTOR> (in drdet/ and tools/);
    what the detectors share lives in shared nodes."""
    node = package.upper()
    bad = []
    for folder in (PACKAGE, os.path.join(ROOT, "tools")):
        for directory, _, files in os.walk(folder):
            if os.path.abspath(directory).startswith(os.path.join(MODELING, package)):
                continue
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    with open(path) as f:
                        source = f.read()
                    bad += [
                        f"{os.path.relpath(path, ROOT)}:{line}"
                        for line, attr in _node_reads(source)
                        if attr == node
                    ]
    assert not bad, f"MODEL.{node} read outside drdet/modeling/{package}/:\n" + "\n".join(bad)


def test_the_sibling_checks_catch_a_violation():
    source = "from drdet.modeling.retinanet.head import RetinaNetHead\ncfg.MODEL.RETINANET.X\n"
    module = "drdet.modeling.fcos.head"
    targets = [t for _, t in drdet_imports(source, module, False)]
    assert targets == ["drdet.modeling.retinanet.head"]
    assert list(_node_reads(source)) == [(2, "RETINANET")]
