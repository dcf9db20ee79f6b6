"""Which functions a server serves: discovery in a directory, and ``name=path/module.attr`` specs.

A function is what Lambda needs to run Python code: a name, a code root (``/var/task``: the
first entry of ``sys.path`` and the working directory) and a handler string ``module.attr``
relative to it (``ch04.handler.handler`` or, as the AWS runtime also accepts,
``ch04/handler.handler``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dsqlkit.errors import ConfigError

# Lambda's rule for function names (the part after ``function:`` in an ARN).
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Module and function names a directory may use for its handler, in order of preference:
# ours (``handler.handler``) and the Lambda console's default (``lambda_function.lambda_handler``).
HANDLER_MODULES = (("handler", "handler"), ("lambda_function", "lambda_handler"))

DEFAULT_TIMEOUT = 30.0
DEFAULT_MEMORY_MB = 512


@dataclass(frozen=True)
class FunctionSpec:
    """One function: ``name``, its ``code_root`` and ``handler`` (``module.attr``)."""

    name: str
    code_root: Path
    handler: str
    timeout: float = DEFAULT_TIMEOUT
    memory_mb: int = DEFAULT_MEMORY_MB
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.code_root.is_dir():
            raise ConfigError(f"function {self.name}: code root {self.code_root} is not a "
                              "directory")
        if self.timeout <= 0 or self.timeout > 900:
            raise ConfigError(f"function {self.name}: timeout must be between 0 and 900 "
                              f"seconds (Lambda's maximum), not {self.timeout}")
        if not 128 <= self.memory_mb <= 10240:
            raise ConfigError(f"function {self.name}: memory must be 128 to 10240 MB, not "
                              f"{self.memory_mb}")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid function name {name!r}: use 1 to 64 letters, digits, '-' or '_' "
            "(Lambda's rule)"
        )
    return name


def discover(functions_dir: str | os.PathLike[str]) -> list[FunctionSpec]:
    """Each subdirectory of ``functions_dir`` holding ``handler.py`` (with ``handler``) or
    ``lambda_function.py`` (with ``lambda_handler``) is a function named after the directory.

    The code root is ``functions_dir`` itself, so handlers can import modules shared by all
    functions (``examples/dat401/bank.py``), as they can when the directory is deployed as
    one Lambda code asset.
    """
    root = Path(functions_dir).resolve()
    if not root.is_dir():
        raise ConfigError(f"--functions {functions_dir}: not a directory")
    specs = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith((".", "_")):
            continue
        for module, attr in HANDLER_MODULES:
            if (child / f"{module}.py").is_file():
                if _NAME.fullmatch(child.name):
                    specs.append(FunctionSpec(child.name, root, f"{child.name}.{module}.{attr}"))
                break
    return specs


def parse_spec(text: str, functions_dir: str | os.PathLike[str] | None = None) -> FunctionSpec:
    """``name=path/to/module.attr``: the module file ``path/to/module.py`` (relative to the
    current directory, or absolute), and the function ``attr`` in it.

    The code root is ``functions_dir`` when the file lies inside it (so shared modules there
    import as on Lambda), else the file's own directory.
    """
    name, eq, target = text.partition("=")
    if not eq or not name or not target:
        raise ConfigError(f"invalid function spec {text!r}: use NAME=path/to/module.handler")
    check_name(name)
    path_part, dot, attr = target.rpartition(".")
    if not dot or not _ATTR.fullmatch(attr):
        raise ConfigError(f"invalid function spec {text!r}: the handler must be "
                          "path/to/module.function, e.g. ch04/handler.handler")
    base = Path(path_part).with_suffix("") if path_part.endswith(".py") else Path(path_part)
    candidates = [base.with_name(base.name + ".py"), base / "__init__.py"]
    module_file = next((p.resolve() for p in candidates if p.is_file()), None)
    if module_file is None:
        raise ConfigError(f"function {name}: no module {base}.py (or package {base}/)")
    module_path = module_file.parent if module_file.name == "__init__.py" else \
        module_file.with_suffix("")
    root = Path(functions_dir).resolve() if functions_dir is not None else None
    if root is not None and module_path.is_relative_to(root):
        code_root, rel = root, module_path.relative_to(root)
    else:
        code_root, rel = module_path.parent, Path(module_path.name)
    module = ".".join(rel.parts)
    if not all(p.isidentifier() for p in rel.parts):
        raise ConfigError(f"function {name}: {rel} is not an importable module path")
    return FunctionSpec(name, code_root, f"{module}.{attr}")


def index(specs: Iterable[FunctionSpec]) -> dict[str, FunctionSpec]:
    out: dict[str, FunctionSpec] = {}
    for spec in specs:
        if spec.name in out:
            raise ConfigError(f"two functions are named {spec.name!r}: rename one (NAME=...)")
        out[spec.name] = spec
    return out
