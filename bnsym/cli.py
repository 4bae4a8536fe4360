"""The ``bnsym`` command line: derive, verify, generate, vectorized, cache, bench, compare,
pipeline.

Each subcommand lives in the module of its pipeline stage; this file only parses arguments and
dispatches, importing the stage lazily (``bnsym cache info`` never loads sympy). Bad arguments
give a one-line error and exit status 2; a failing check exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump, no traceback)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"bnsym: error: {message} (see 'bnsym {self._sub_name()}--help')\n")

    def _sub_name(self) -> str:
        parts = self.prog.split()[1:]
        return (" ".join(parts) + " ") if parts else ""


def _csv(choices):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}, got {text!r}"
            )
        return items

    return parse


def seed_arg(text: str) -> int:
    """A random seed: an integer >= 0 (NumPy's generators refuse negative ones)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _folder(text: str) -> str:
    """A folder to write into: not an empty path (an existing file is refused by the command)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty path")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bnsym",
        description="Batch Normalization derived with SymPy, proven, generated as C, compiled with cffi.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("derive", help="print the derived forward and backward passes")
    p.add_argument("--mode", choices=["train", "eval"], default="train")
    p.add_argument("--stages", action="store_true", help="show every forward stage and its adjoint")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--plan", action="store_true", help="show the kernel plans given to the code generator")
    form.add_argument("--latex", action="store_true",
                      help="print LaTeX instead of plain text (the stages and closed forms; the plans are text only)")
    p.add_argument("--dot", metavar="FILE", help="write the computational graph in Graphviz DOT")
    p.set_defaults(handler=("bnsym.derivation", "cli_derive"))

    p = sub.add_parser("verify", help="run every proof of the derived gradients and print a table")
    p.add_argument("--mode", choices=["train", "eval", "all"], default="all")
    p.add_argument("--max-m", type=int, default=6, help="largest batch size for the exact proofs (2..8)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.set_defaults(handler=("bnsym.verify", "cli_verify"))

    p = sub.add_parser("generate", help="write the C kernels from the derivation and the templates")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if generated/ differs from a fresh generation")
    mode.add_argument("--update", action="store_true", help="rewrite generated/ in the source tree")
    mode.add_argument("--out", metavar="DIR", type=_folder, help="write a custom set into DIR (for your own C project)")
    p.add_argument("--dtypes", type=_csv(["float32", "float64"]), default=["float32", "float64"])
    p.add_argument("--layouts", type=_csv(["ncs", "nsc"]), default=["ncs", "nsc"],
                   help="ncs: contiguous (N, C, *spatial); nsc: channels-last")
    p.add_argument("--prefix", default="bnsym_", help="symbol prefix of the C functions")
    p.set_defaults(handler=("bnsym.codegen", "cli_generate"))

    p = sub.add_parser("vectorized", help="check that the compiler vectorizes every marked loop of the kernels (GCC)")
    p.add_argument("dir", nargs="?", help="folder of kernels (default: the package's generated/)")
    p.add_argument("--no-openmp", action="store_true", help="compile as the build does without OpenMP (-fopenmp-simd)")
    p.set_defaults(handler=("bnsym.vectorize", "cli_vectorized"))

    p = sub.add_parser("cache", help="inspect or clear the compiled-module cache")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(handler=("bnsym.build", "cli_cache"))

    p = sub.add_parser("bench", help="benchmark bnsym against NumPy, PyTorch and a copy floor")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the benchmark (see 'bnsym bench -h')")
    p.set_defaults(handler=("bnsym.bench", "cli_bench"))

    p = sub.add_parser("compare", help="time two folders of kernels against each other, call by call in one process")
    p.add_argument("compare_args", nargs=argparse.REMAINDER, help="options (see 'bnsym compare -h')")
    p.set_defaults(handler=("bnsym.compare", "cli_compare"))

    p = sub.add_parser("pipeline", help="the main job end to end: derive, verify, generate, compile, run")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.set_defaults(handler=("bnsym.pipeline", "cli_pipeline"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # the benchmark parses its own options (argparse's REMAINDER refuses a leading '-x')
        args = argparse.Namespace(bench_args=argv[1:], handler=("bnsym.bench", "cli_bench"))
    elif argv[:1] == ["compare"]:
        args = argparse.Namespace(compare_args=argv[1:], handler=("bnsym.compare", "cli_compare"))
    else:
        args = parser.parse_args(argv)
    module_name, func_name = args.handler
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("bnsym: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
