"""Where the package's data folders live, in a source checkout and when installed.

In a checkout (editable install or running from the tree) ``templates/`` and ``generated/`` sit
beside the ``bnsym/`` package; an installed wheel carries them inside it as ``bnsym/templates``
and ``bnsym/generated`` (see ``[tool.setuptools.package-dir]`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bnsym: cannot find the {name}/ folder next to {_PKG}")


def templates_dir() -> Path:
    """The folder holding the Jinja2 templates (``*.j2``)."""
    return _find("templates")


def generated_dir() -> Path:
    """The folder holding the committed generated C (``*.c``, ``*.h``)."""
    return _find("generated")


def source_checkout() -> Path | None:
    """The repository root when running from a source checkout, else None."""
    root = _PKG.parent
    if (root / "pyproject.toml").is_file() and (root / "templates").is_dir():
        return root
    return None
