"""A persistent XLA compilation cache, so that repeated runs skip most of the compile.

With the cache on, JAX stores every executable it compiles in a directory and a later process
loads it from there instead of compiling again, as long as the program, the input shapes, the
JAX version and the device are the same. A method compiles in seconds; loading it takes a
fraction of that.

The directory is ``$UNROLL_CACHE_DIR``, else ``$XDG_CACHE_HOME/unroll/jax``, else
``~/.cache/unroll/jax``. Like any JAX compilation cache it is trusted code: do not point it at
a directory that others can write to.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache


def default_dir() -> Path:
    """The cache directory the environment asks for (see the module docstring)."""
    if os.environ.get("UNROLL_CACHE_DIR"):
        return Path(os.environ["UNROLL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unroll" / "jax"


def enable(path: str | os.PathLike | None = None) -> Path:
    """Turns the persistent compilation cache on for this process.

    Every executable is cached, however small and however quick to compile: JAX's defaults
    (only compiles over one second) would skip the many small programs a run also compiles.

    Args:
        path: Cache directory; ``default_dir()`` when None. Created if missing.

    Returns:
        The cache directory.

    Raises:
        OSError: If the directory cannot be created.
    """
    path = Path(path) if path is not None else default_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax_cache.reset_cache()  # JAX opens its cache once; make a changed directory take effect
    return path


def disable() -> None:
    """Turns the persistent compilation cache off for this process (also one set by JAX flags)."""
    jax.config.update("jax_compilation_cache_dir", None)
    jax_cache.reset_cache()
