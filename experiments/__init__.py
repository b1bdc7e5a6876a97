"""The commands (`python -m experiments.NAME`), and how each one starts: under a memory allocator that keeps what it frees.

XLA:CPU allocates a training step's temporary buffers afresh at every step
(75 MB for the VGG-style spec `2xc32-max-2xc64-max-fc128` at batch 128, about
600 MB for ResNet-18), and glibc's allocator gives buffers that large back to
the kernel when they are freed, so every step paid one page fault for each 4 KB
it touched: 18,000 to 180,000 faults a step, 8-15% of it (BENCHMARKS.md). So a
command re-executes itself once, before it imports anything else, with jemalloc
preloaded (Debian's libjemalloc2, which setup.sh installs) and told to keep the
memory it frees for the next step (or, started with jemalloc preloaded but no
`MALLOC_CONF`, with the settings added). Where jemalloc is not installed, or with
`CNN_JAX_ALLOCATOR=system`, the command runs as it is. Code that imports
cnn_jax in a process of its own (a notebook) gets the same by starting Python
with `LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=` the `RETAINING` settings.
"""

import ctypes.util
import os
import sys
from collections.abc import Callable

RETAINING = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
"""jemalloc's settings: no large allocation returned to the kernel at once, nothing freed returned later."""


def allocator() -> str:
    """The memory allocator this process runs under, for the benchmarks to say: "jemalloc" or "system"."""
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def _command() -> bool:
    """Whether this process is `python -m experiments.NAME` (not a test or a program importing this package)."""
    argv = getattr(sys, "orig_argv", [])
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("experiments.")


def retaining_environment(environ: dict, locate: Callable[[], str | None]) -> dict | None:
    """The environment a command re-executes itself in to run under jemalloc (`locate()`: its path, or None where
    it is not installed) with the `RETAINING` settings; None where it runs so already, or cannot. A jemalloc
    preloaded by hand without `MALLOC_CONF` gets the settings: its defaults give large buffers back at once."""
    preloaded = environ.get("LD_PRELOAD", "")
    if "jemalloc" in preloaded:
        return None if "MALLOC_CONF" in environ else {**environ, "MALLOC_CONF": RETAINING}
    library = locate()
    if library is None:
        return None
    return {**environ, "LD_PRELOAD": " ".join(filter(None, (library, preloaded))), "MALLOC_CONF": RETAINING}


def _restart_with_retaining_allocator() -> None:
    mode = os.environ.get("CNN_JAX_ALLOCATOR", "jemalloc")
    if mode not in ("jemalloc", "system"):
        sys.exit(f"CNN_JAX_ALLOCATOR={mode} is not one of jemalloc, system: 'jemalloc' (or unset) runs commands "
                 "under jemalloc where it is installed, 'system' under the system's allocator")
    if mode == "system" or not _command():
        return
    environment = retaining_environment(dict(os.environ), lambda: ctypes.util.find_library("jemalloc"))
    if environment is not None:
        os.execve(sys.executable, sys.orig_argv, environment)


_restart_with_retaining_allocator()
