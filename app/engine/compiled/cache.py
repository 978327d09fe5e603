"""The directory that holds compiled graphs across restarts (DYDC_COMPILE_CACHE_DIR).

What is in it is loaded as native code (shared libraries inside AOTInductor packages) and
unpickled, so whoever can write to it can run code in the service. It is therefore created
mode 0700, owned by the service's user, and a directory that exists with another owner or
with access for group or others is refused at start-up rather than used: a fixed path under a
shared /tmp could have been pre-created and filled by another local user. PyTorch's own
default (``/tmp/torchinductor_<user>``) is exactly such a path, which is why the build
process points Inductor's and Triton's caches inside this directory too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["CacheDirError", "default_cache_dir", "prepare_cache_dir"]


class CacheDirError(RuntimeError):
    """DYDC_COMPILE_CACHE_DIR cannot be used safely; the message says what to change."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dydc`` or ``~/.cache/dydc``: the service user's own, never /tmp."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dydc"


def prepare_cache_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if it is missing, check it if it exists; return it
    absolute. Raises CacheDirError if it is not a directory of ours closed to others."""
    path = Path(path).expanduser().absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheDirError(f"DYDC_COMPILE_CACHE_DIR={path} cannot be created ({exc}); set it "
                            "to a directory the service's user can create") from None
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise CacheDirError(f"DYDC_COMPILE_CACHE_DIR={path} is a symbolic link; point it at "
                            "the directory itself")
    if not stat.S_ISDIR(info.st_mode):
        raise CacheDirError(f"DYDC_COMPILE_CACHE_DIR={path} is not a directory")
    if info.st_uid != os.geteuid():
        raise CacheDirError(
            f"DYDC_COMPILE_CACHE_DIR={path} is owned by uid {info.st_uid}, not by the service's "
            f"user (uid {os.geteuid()}): its contents are loaded as code, so it must be ours. "
            "Remove it or choose another path")
    if info.st_mode & 0o077:
        raise CacheDirError(
            f"DYDC_COMPILE_CACHE_DIR={path} has mode {stat.S_IMODE(info.st_mode):04o}: others "
            f"can reach what is loaded from it as code. chmod 700 {path}, or choose another path")
    return path
