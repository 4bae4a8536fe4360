"""pytest plugin (``-p _sanitized_build``): compile the kernel module, C entry points included,
with AddressSanitizer and UndefinedBehaviorSanitizer (the Python process must preload their
runtimes; see test_sanitizers.test_entry_points_under_sanitizers)."""

from bnsym import compiler

SAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
_compile_args, _link_args = compiler.compile_args, compiler.link_args
compiler.compile_args = lambda: _compile_args() + SAN
compiler.link_args = lambda: _link_args() + SAN[:1]
