"""Loads a command-line tool of tools/ as a module, by its path, for the tests that run its main():
no sys.path entry for tools/, so library code is always imported from drdet. And the environment
of a test's subprocess that runs a tool: this checkout's drdet first on PYTHONPATH."""

import importlib.util
import os
import sys
from types import ModuleType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py as the module "drdet_tool_<name>" (loaded once per process)."""
    module_name = f"drdet_tool_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(
        module_name, os.path.join(ROOT, "tools", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def checkout_env(**changes: str) -> dict[str, str]:
    """os.environ with this checkout first on PYTHONPATH, so that a tool run in a subprocess
    imports this checkout's drdet (not an installed one: a worktree or a second clone tests its
    own code), and with `changes` set."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **changes}
