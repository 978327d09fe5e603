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

__all__ = ["CacheDirError", "default_cache_dir", "prepare_cache_dir", "use_private_compile_caches"]

# PyTorch's own compile caches, and the folder of the cache directory each is put in
_TORCH_CACHES = (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton"))


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
    _check_ancestors(path)
    return path


def _check_ancestors(path: Path) -> None:
    """No other user can replace ``path`` by one of their own: every folder above it (as
    written, and as its links resolve) belongs to root or to us, and is closed to others'
    writes, or is sticky like /tmp (where others cannot rename what is ours). Else, after a
    check of the directory alone, a parent's owner could swap in a folder of theirs and have
    what they put in it loaded as code."""
    ours = {0, os.geteuid()}
    for folder in path.parents:  # links on the way, as written
        info = folder.lstat()
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in ours:
            raise CacheDirError(
                f"DYDC_COMPILE_CACHE_DIR={path} goes through {folder}, a symbolic link of uid "
                f"{info.st_uid}, who could point it elsewhere; choose a path of folders that "
                "are root's or the service user's")
    for folder in Path(os.path.realpath(path)).parents:  # the folders themselves
        info = folder.stat()
        if info.st_uid not in ours:
            raise CacheDirError(
                f"DYDC_COMPILE_CACHE_DIR={path} is inside {folder}, owned by uid {info.st_uid}, "
                "who could replace it with a directory of their own; choose a path of folders "
                "that are root's or the service user's")
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise CacheDirError(
                f"DYDC_COMPILE_CACHE_DIR={path} is inside {folder} (mode "
                f"{stat.S_IMODE(info.st_mode):04o}), where others can rename it and put a "
                f"directory of their own in its place; chmod go-w {folder}, or choose another "
                "path")


def use_private_compile_caches(cache_dir: Path | str) -> None:
    """Point PyTorch's own compile caches (Inductor's C++ and Triton's) inside ``cache_dir``,
    in this process's environment and so in the build process it starts, unless the operator
    set them. Called before anything compiles: the first compile (the probe of the CPU's
    vector instructions at start-up) writes torch's default, ``/tmp/torchinductor_<user>``,
    into the environment, where a child's ``setdefault`` then found it and kept it (every
    build compiled and loaded its code there). A variable holding that default is taken to
    be torch's, not the operator's, and replaced too."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    shared = os.path.abspath(torch_default())
    for name, sub in _TORCH_CACHES:
        given = os.environ.get(name)
        if given is None or os.path.abspath(given) == shared:
            os.environ[name] = os.path.join(os.fspath(cache_dir), sub)
