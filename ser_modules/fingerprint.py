"""Fingerprints of stored results, and locks on the folders that hold them.

A result on disk (a finished fold, a BAS search and its retraining, a Vesper pretraining
and its export, a stage of the default run) is reused only when what produced it is
provably the same. Each such folder holds a ``fingerprint.json``, written when the work
starts, with:

* ``hparams``: the effective plain-valued hparams (after overrides and dataset defaults),
  plus the sha256 of the hparams file (the object wiring);
* ``overrides`` and ``preparation``: what the command line changed;
* ``manifests``: the sha256 of each manifest CSV the work reads;
* ``audio``: a digest of the content (sha256 of the bytes) of every audio file it reads;
* ``cache``: the feature-cache key(s), when features are cached;
* ``code``: the package version and a sha256 of the ``ser_modules`` sources (``git
  describe`` is stored for information and not compared).

**Policy (the same everywhere): a mismatch is refused.** :func:`check_fingerprint` raises
:class:`FingerprintMismatch` naming every differing key with its stored and new value and
telling the user to pass a new output folder or delete the old one. Nothing is redone or
overwritten silently, so a folder's results always belong to its fingerprint. A folder
with results but no fingerprint (written by an older version) is refused the same way.

Keys that cannot change a result (which fold of a multi-fold run is selected, worker
counts, checkpoint intervals: resumption is exact) are left out (:data:`IGNORED_HPARAMS`).

:class:`FolderLock` is an exclusive ``fcntl`` lock on ``<folder>/.lock``: two runs on one
output folder fail clearly instead of corrupting each other's checkpoints.
"""

import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import subprocess

from ser_modules.manifest import atomic_write_text

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
LOCK_FILE = ".lock"
PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__))
# Hparams that select what to run or how fast, never what a result is.
IGNORED_HPARAMS = frozenset(
    {
        "fold",
        "num_workers",
        "ckpt_interval_minutes",
        "ckpt_interval_steps",
        "progressbar",
        "noprogressbar",
        "cache_folder",
    }
)
# Fingerprint entries stored for information only.
INFORMATIONAL = frozenset({"code.git"})
PLAIN_TYPES = (type(None), bool, int, float, str)


class FingerprintMismatch(RuntimeError):
    """A folder holds results of a different configuration (or of an unknown one)."""


class FolderBusy(RuntimeError):
    """Another process holds the lock of a folder."""


def file_sha256(path, chunk_size=1 << 20):
    """sha256 of a file's bytes, memoised per (path, size, modification time)."""
    stat = os.stat(path)
    return _file_sha256(
        os.path.abspath(path), stat.st_size, stat.st_mtime_ns, chunk_size
    )


@functools.lru_cache(maxsize=200_000)
def _file_sha256(path, size, mtime_ns, chunk_size):
    del size, mtime_ns  # part of the memo key only
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text):
    """sha256 of a string (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_sha256(value):
    """sha256 of a JSON-serialisable value in canonical form (sorted keys)."""
    return text_sha256(json.dumps(value, sort_keys=True, default=str))


@functools.lru_cache(maxsize=1)
def code_version():
    """``{"package", "sources_sha256", "git"}`` of the running ``ser_modules``."""
    from ser_modules import __version__

    digest = hashlib.sha256()
    for folder, subfolders, names in os.walk(PACKAGE_ROOT):
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not name.startswith((".", "__pycache__"))
        )
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(
                    os.path.relpath(path, PACKAGE_ROOT).encode("utf-8") + b"\0"
                )
                with open(path, "rb") as handle:
                    digest.update(handle.read() + b"\0")
    git = None
    try:
        git = (
            subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                cwd=PACKAGE_ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "package": __version__,
        "sources_sha256": digest.hexdigest(),
        "git": git,
    }


def plain_hparams(hparams, exclude_prefixes=()):
    """The plain-valued entries of loaded hparams (numbers, strings, lists of them).

    Objects are represented by the hparams file's hash; paths under ``exclude_prefixes``
    (the output folder: moving it must not look like a change) and
    :data:`IGNORED_HPARAMS` are left out.
    """

    def plain(value):
        if isinstance(value, PLAIN_TYPES):
            return True
        if isinstance(value, (list, tuple)):
            return all(plain(item) for item in value)
        return False

    prefixes = tuple(
        os.path.join(os.path.abspath(str(prefix)), "")
        for prefix in exclude_prefixes
        if prefix
    )
    selected = {}
    for name, value in hparams.items():
        if name in IGNORED_HPARAMS or name.startswith("__") or not plain(value):
            continue
        if (
            isinstance(value, str)
            and os.sep in value
            and os.path.join(os.path.abspath(value), "").startswith(prefixes)
        ):
            continue  # a path inside the output folder: moving the folder is no change
        selected[name] = list(value) if isinstance(value, tuple) else value
    return selected


def audio_digest(rows, replacements, resolve):
    """One sha256 over ``(ID, sha256 of the audio bytes)`` of manifest rows, sorted by ID."""
    pairs = sorted(
        (row["ID"], file_sha256(resolve(row["wav"], replacements, row["ID"])))
        for row in rows
    )
    return json_sha256(pairs)


def flatten(value, prefix=""):
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if isinstance(value, dict) and value:
        flat = {}
        for key in sorted(value):
            flat.update(flatten(value[key], f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def differences(stored, current):
    """``[(key, stored value, current value)]`` of the compared keys that differ."""
    old, new = (
        flatten(json.loads(json.dumps(stored, default=str))),
        flatten(json.loads(json.dumps(current, default=str))),
    )
    missing = object()
    keys = sorted((set(old) | set(new)) - INFORMATIONAL)
    return [
        (key, old.get(key, "<absent>"), new.get(key, "<absent>"))
        for key in keys
        if old.get(key, missing) != new.get(key, missing)
    ]


def check_fingerprint(folder, fingerprint, what, has_results=None):
    """Write ``<folder>/fingerprint.json`` or check the one there; refuse any mismatch.

    Arguments
    ---------
    folder : str
        The folder whose results the fingerprint vouches for.
    fingerprint : dict
        What produces them (JSON-serialisable).
    what : str
        Named in the error, e.g. ``"fold1 of results/x"``.
    has_results : callable, optional
        ``has_results(folder) -> bool``: whether the folder already holds results; such a
        folder without a fingerprint is refused (its origin cannot be proven).

    Raises
    ------
    FingerprintMismatch
        Naming the differing keys and what to do.
    """
    path = os.path.join(folder, FINGERPRINT_FILE)
    remedy = (
        f"Its results cannot be reused for this configuration: pass a new --output_folder, or "
        f"delete {folder} to redo it."
    )
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                stored = json.load(handle)
        except (OSError, ValueError) as error:
            raise FingerprintMismatch(
                f"{path} is unreadable ({error}). {remedy}"
            ) from error
        changed = differences(stored, fingerprint)
        if changed:
            lines = [
                f"  {key}: stored {old!r}, now {new!r}"
                for key, old, new in changed[:20]
            ]
            if len(changed) > 20:
                lines.append(f"  ... and {len(changed) - 20} more")
            raise FingerprintMismatch(
                f"{what} was produced by a different configuration ({path}); differing keys:\n"
                + "\n".join(lines)
                + f"\n{remedy}"
            )
        return False
    if (
        has_results is not None
        and os.path.isdir(folder)
        and has_results(folder)
    ):
        raise FingerprintMismatch(
            f"{what} holds results without a fingerprint ({path} is missing: written by an older "
            f"version or by hand), so what produced them is unknown. {remedy}"
        )
    atomic_write_text(
        path,
        json.dumps(fingerprint, indent=2, sort_keys=True, default=str) + "\n",
    )
    return True


class FolderLock:
    """An exclusive ``fcntl`` lock on ``<folder>/.lock`` (released when the process dies).

    Arguments
    ---------
    folder : str
    what : str
        Named in the error.
    wait : bool
        Block until the lock is free (True) or fail at once with :class:`FolderBusy`.
    """

    def __init__(self, folder, what="this folder", wait=False):
        self.folder = folder
        self.what = what
        self.wait = wait
        self.handle = None

    def __enter__(self):
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, LOCK_FILE)
        self.handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(
                self.handle, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB)
            )
        except OSError as error:
            self.handle.seek(0)
            owner = self.handle.read().strip() or "unknown"
            self.handle.close()
            self.handle = None
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise FolderBusy(
                    f"Another process (pid {owner}) is using {self.what} ({self.folder}): wait for it to "
                    "finish, or choose another output folder."
                ) from error
            raise
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc_info):
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
        return False
