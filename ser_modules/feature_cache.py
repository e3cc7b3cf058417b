"""On-disk cache of frozen-upstream features, extracted once per utterance.

The upstream is frozen, so its features never change during training: a BAS search of
100 epochs or a 50-epoch fine-tuning can read them from disk instead of running WavLM
Large every epoch. The cache stores only the selected layers, in float16 by default.

Layout of ``<root>/<key>/``::

    key.json            # what the key hashes: upstream identity, crop, sample rate, dtype
    .lock               # fcntl lock held by the process that builds
    shard_00000.bin     # raw (frames, nL, D) array: the utterances of the shard, one after
    shard_00000.json    # the other along time; per utterance its id, the sha256 of its
                        # audio file, offset, frame count and a CRC-32 of its bytes
    shard_00000.damaged # (only after a reader found a bad checksum) rebuilt by the next build

``key`` is a hash of :meth:`Upstream.identity` (model files by sha256, layers,
normalisation), the crop, the sample rate, the storage dtype and the compute precision,
so a different model, layer set or crop never reuses stale features. Inside a key, each
utterance is stored under its ID **and the sha256 of its audio file's bytes**: two corpora
with the same file names, or a file re-recorded in place, never share features. A cache
object reads only the utterances it was given (:meth:`FeatureCache.build` or
:meth:`FeatureCache.bind` with their manifest rows).

Integrity: a shard is complete when its ``.json`` exists (the ``.bin`` is written under a
unique temporary name, renamed, and the ``.json`` written last, atomically). Every build
checks every record (readable, consistent) and shard (exact byte size) and rebuilds the
damaged ones, naming them in a warning; every read checks the CRC-32 of the utterance it
returns, and a mismatch raises :class:`CacheCorruptionError` naming the shard (and marks it
for rebuilding). Builders take an exclusive ``fcntl`` lock on the folder, so two runs
sharing a cache build it once: the second waits, then finds the features there. A build
only ever deletes its own temporary file, or temporary shards left by a dead builder
(seen while holding the lock).

A build that is killed keeps its completed shards; the next build extracts only the
utterances not cached yet. Utterances are sorted by duration (longest first, then by id)
before being cut into shards and batches, so a resumed build writes the same files as an
uninterrupted one, and batches hold utterances of similar length (little padding).

Reading memory-maps the shard and copies only the requested utterance.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import uuid
import zlib

import numpy as np
import torch
from tqdm import tqdm

from ser_modules.audio import (
    WaveformDataset,
    audio_info,
    collate_waveforms,
    seconds_to_samples,
)
from ser_modules.fingerprint import file_sha256
from ser_modules.manifest import atomic_write_text, resolve_path
from ser_modules.upstreams.base import minimum_samples

logger = logging.getLogger(__name__)

FORMAT_VERSION = (
    2  # 2: utterances keyed by ID + audio sha256, per-utterance CRC-32
)
KEY_FILE = "key.json"
NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SHARD_RECORD = re.compile(r"shard_(\d+)\.json")
TEMPORARY_SHARD = re.compile(r"\.tmp_shard_\d+\..+\.bin")
LOCK_FILE = ".lock"


class CacheCorruptionError(RuntimeError):
    """A cached shard whose bytes do not match their checksum (named in the message)."""


class NonFiniteFeaturesError(ValueError):
    """An upstream gave NaN or infinite features for an utterance (named in the message)."""


def crc32(array):
    """CRC-32 of an array's bytes (C order)."""
    return zlib.crc32(np.ascontiguousarray(array).tobytes()) & 0xFFFFFFFF


class ShardWriter:
    """Streams utterance features into a uniquely named temporary ``.bin``; :meth:`commit` publishes it.

    Only one batch is in memory at a time. The ``.bin`` is renamed into place first and
    the ``.json`` record written last, so a shard with a ``.json`` is always complete.
    The temporary name is unique to this writer (pid + random), so no other process
    ever owns or deletes it.
    """

    def __init__(self, folder, shard, dtype, paths=None):
        self.folder = folder
        self.name = f"shard_{shard:05d}"
        self.dtype = dtype
        self.paths = paths or {}
        self.tmp_path = os.path.join(
            folder, f".tmp_{self.name}.{os.getpid()}.{uuid.uuid4().hex}.bin"
        )
        self.file = open(self.tmp_path, "wb")
        self.record = {
            "ids": [],
            "contents": [],
            "offsets": [],
            "lengths": [],
            "checksums": [],
            "num_frames": 0,
        }

    def add(self, utt_id, frames, content):
        """Append one utterance's ``(T', nL, D)`` features (any device and float dtype).

        Raises
        ------
        NonFiniteFeaturesError
            NaN or infinite features, naming the utterance and its audio file.
        """
        if not torch.isfinite(frames).all():
            raise NonFiniteFeaturesError(
                f"The upstream gave NaN or infinite features for utterance {utt_id} "
                f"({self.paths.get(utt_id, 'audio file unknown')}): check that audio file (out-of-range "
                "samples) and remove it from the manifest or re-extract it."
            )
        stored = frames.to(self.dtype)
        if not torch.isfinite(stored).all():
            raise NonFiniteFeaturesError(
                f"The features of utterance {utt_id} ({self.paths.get(utt_id, 'audio file unknown')}) exceed "
                f"the range of {self.dtype}, the cache's storage type: run the recipe with --use_cache=False "
                "(features computed on the fly in float32), or build FeatureCache(dtype=torch.float32)."
            )
        array = stored.cpu().numpy()  # C order: (T', nL, D)
        self.file.write(array.tobytes())
        self.record["ids"].append(utt_id)
        self.record["contents"].append(content)
        self.record["offsets"].append(self.record["num_frames"])
        self.record["lengths"].append(frames.shape[0])
        self.record["checksums"].append(crc32(array))
        self.record["num_frames"] += frames.shape[0]
        self.record["num_layers"], self.record["dim"] = (
            frames.shape[1],
            frames.shape[2],
        )

    def commit(self):
        """Make the shard durable and visible; returns its frame count."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.record["dtype"] = str(self.dtype).replace("torch.", "")
        self.record["num_bytes"] = os.path.getsize(self.tmp_path)
        os.replace(self.tmp_path, os.path.join(self.folder, f"{self.name}.bin"))
        atomic_write_text(
            os.path.join(self.folder, f"{self.name}.json"),
            json.dumps(self.record) + "\n",
        )
        return self.record["num_frames"]

    def discard(self):
        """Close without publishing and delete this writer's own temporary file."""
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp_path)


class FeatureCache:
    """Frozen-upstream features of every utterance, stored once on disk.

    Arguments
    ---------
    root : str
        Parent folder; the cache lives in ``root/<key>/``.
    upstream : ser_modules.upstreams.base.Upstream
        The frozen upstream (its ``identity()`` enters the key).
    crop_seconds : float, optional
        Keep at most this many seconds per utterance (``None``: whole utterances).
    crop_mode : str
        ``"first"`` or ``"center"``. A random crop cannot be cached (it would be drawn
        once and frozen): cache whole utterances and crop the features instead.
    dtype : torch.dtype
        Storage dtype, ``torch.float16`` (default) or ``torch.float32``.
    precision : str
        Compute precision of the extraction: ``"fp32"``, ``"bf16"`` (autocast) or
        ``"fp16"`` (autocast, GPU). It changes the features, so it is part of the key.
    shard_size : int
        Utterances per shard (the unit of resumption).

    Example
    -------
    >>> cache = FeatureCache("cache", upstream, crop_seconds=6.5)  # doctest: +SKIP
    >>> cache.build(read_csv("train.csv"), {"data_root": data_folder})  # doctest: +SKIP
    >>> cache.load("Ses01F_impro01_F000").shape  # (T', nL, D), float16  # doctest: +SKIP

    A cache object reads the utterances it built or was bound to (:meth:`bind`): each is
    identified by its ID and the sha256 of its audio file.
    """

    def __init__(
        self,
        root,
        upstream,
        crop_seconds=None,
        crop_mode="first",
        dtype=torch.float16,
        precision="fp32",
        shard_size=256,
    ):
        if crop_mode not in ("first", "center"):
            raise ValueError(
                f"crop_mode={crop_mode!r} cannot be cached: use 'first' or 'center' (a random "
                "crop would be drawn once and frozen; cache whole utterances and crop features)."
            )
        if dtype not in NUMPY_DTYPES:
            raise ValueError(
                f"Unsupported cache dtype {dtype}: use torch.float16 or torch.float32."
            )
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(
                f"Unknown precision {precision!r}: use one of {sorted(AUTOCAST_DTYPES)}."
            )
        self.upstream = upstream
        self.crop_seconds = (
            crop_seconds if crop_seconds and crop_seconds > 0 else None
        )
        self.crop_mode = crop_mode
        self.dtype = dtype
        self.precision = precision
        self.shard_size = shard_size
        self.sample_rate = upstream.sample_rate
        self.key_fields = {
            "format_version": FORMAT_VERSION,
            "upstream": upstream.identity(),
            "crop_seconds": self.crop_seconds,
            "crop_mode": crop_mode if self.crop_seconds else None,
            "sample_rate": self.sample_rate,
            "dtype": str(dtype).replace("torch.", ""),
            "precision": precision,
        }
        canonical = json.dumps(self.key_fields, sort_keys=True)
        self.key = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
        self.folder = os.path.join(os.path.abspath(str(root)), self.key)
        self._index = None  # (utt_id, audio sha256) -> (shard number, frame offset, frame count, crc32)
        self._num_shards_read = 0
        self._memmaps = {}
        self._shard_shapes = {}
        self._contents = {}  # utt_id -> sha256 of its audio file (set by build / bind)
        self._paths = {}  # utt_id -> audio file (named in errors)

    def __getstate__(self):
        # DataLoader workers that receive the cache only read it: leave the upstream's
        # weights and the open memory maps behind (maps reopen lazily).
        state = dict(self.__dict__)
        state["upstream"] = None
        state["_memmaps"] = {}
        return state

    # ----------------------------------------------------------------- reading
    def _shard_json_files(self):
        if not os.path.isdir(self.folder):
            return []
        return sorted(
            name
            for name in os.listdir(self.folder)
            if SHARD_RECORD.fullmatch(name)
        )

    def _shard_path(self, shard, extension):
        return os.path.join(self.folder, f"shard_{shard:05d}.{extension}")

    def _check_record(self, shard):
        """A shard's record if it and its ``.bin`` are sound; else a description of the damage."""
        record_path = self._shard_path(shard, "json")
        try:
            with open(record_path, encoding="utf-8") as handle:
                record = json.load(handle)
            count = len(record["ids"])
            lists = ("contents", "offsets", "lengths", "checksums")
            if (
                any(len(record[name]) != count for name in lists)
                or sum(record["lengths"]) != record["num_frames"]
            ):
                return None, f"{record_path} is inconsistent"
            if record.get("dtype") != str(self.dtype).replace("torch.", ""):
                return None, f"{record_path} stores {record.get('dtype')}"
            itemsize = np.dtype(NUMPY_DTYPES[self.dtype]).itemsize
            expected = (
                record["num_frames"]
                * record.get("num_layers", 0)
                * record.get("dim", 0)
                * itemsize
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            return (
                None,
                f"{record_path} is unreadable ({type(error).__name__}: {error})",
            )
        bin_path = self._shard_path(shard, "bin")
        if not os.path.isfile(bin_path):
            return None, f"{bin_path} is missing"
        if (
            os.path.getsize(bin_path) != expected
            or record.get("num_bytes", expected) != expected
        ):
            return (
                None,
                f"{bin_path} holds {os.path.getsize(bin_path)} bytes, its record says {expected}",
            )
        if os.path.exists(self._shard_path(shard, "damaged")):
            return None, f"{bin_path} failed a checksum when read"
        return record, None

    def _read_index(self):
        index = {}
        names = self._shard_json_files()
        for name in names:
            shard = int(SHARD_RECORD.fullmatch(name)[1])
            record, damage = self._check_record(shard)
            if record is None:
                logger.warning(
                    "Ignoring a damaged feature-cache shard: %s (the next build rebuilds it).",
                    damage,
                )
                continue
            self._shard_shapes[shard] = (
                record["num_frames"],
                record["num_layers"],
                record["dim"],
            )
            for entry in zip(
                record["ids"],
                record["contents"],
                record["offsets"],
                record["lengths"],
                record["checksums"],
            ):
                index[entry[0], entry[1]] = (shard, *entry[2:])
        self._index = index
        self._num_shards_read = len(names)
        return index

    def _refresh_index(self):
        """Read the index if it was never read or if shards appeared since."""
        if (
            self._index is None
            or len(self._shard_json_files()) != self._num_shards_read
        ):
            self._read_index()
        return self._index

    def _lookup(self, utt_id):
        """Index entry of ``utt_id`` with its audio's content (the index is re-read on a miss only)."""
        key = (utt_id, self._contents.get(utt_id))
        if self._index is None or key not in self._index:
            self._refresh_index()
        return self._index.get(key)

    def bind(self, rows, replacements=None):
        """Tell this cache object which audio each utterance ID stands for (hashes the files).

        :meth:`build` does it for its rows; a reader that did not build calls this.
        """
        for utt_id, (path, _) in self._collect_items(
            rows, replacements or {}
        ).items():
            self._paths[utt_id] = path
            self._contents[utt_id] = file_sha256(path)

    def has(self, utt_id):
        """Whether the features of ``utt_id`` (with its bound audio content) are cached."""
        return self._lookup(utt_id) is not None

    def __contains__(self, utt_id):
        return self.has(utt_id)

    def __len__(self):
        return len(self._refresh_index())

    def load(self, utt_id):
        """Cached features of one utterance, verified against their checksum.

        Arguments
        ---------
        utt_id : str
            The manifest ID (built or bound in this object).

        Returns
        -------
        torch.Tensor
            ``(T', nL, D)`` in the storage dtype (float16 by default): time first, so that
            SpeechBrain's ``PaddedBatch`` pads along time and gives relative lengths;
            permute the batch to ``(B, nL, T', D)`` for the downstream.

        Raises
        ------
        KeyError
            The utterance is not cached (or was never bound to its audio in this object).
        CacheCorruptionError
            The stored bytes do not match their checksum (names the shard).
        """
        if utt_id not in self._contents:
            raise KeyError(
                f"Utterance {utt_id!r} was not given to this cache ({self.folder}): call "
                "FeatureCache.build (or bind) with the manifest rows that contain it."
            )
        entry = self._lookup(utt_id)
        if entry is None:
            raise KeyError(
                f"No cached features for utterance {utt_id!r} ({self._paths.get(utt_id)}) in {self.folder}: "
                "run FeatureCache.build on the manifests that contain it."
            )
        shard, offset, length, checksum = entry
        if shard not in self._memmaps:
            self._memmaps[shard] = np.memmap(
                self._shard_path(shard, "bin"),
                dtype=NUMPY_DTYPES[self.dtype],
                mode="r",
                shape=self._shard_shapes[shard],
            )
        array = np.array(self._memmaps[shard][offset : offset + length])
        if crc32(array) != checksum:
            bin_path = self._shard_path(shard, "bin")
            with contextlib.suppress(OSError):
                with open(
                    self._shard_path(shard, "damaged"), "w", encoding="utf-8"
                ) as handle:
                    handle.write(f"checksum mismatch on {utt_id}\n")
            raise CacheCorruptionError(
                f"The cached features of utterance {utt_id} in {bin_path} do not match their checksum "
                "(the file was damaged on disk). Run again: the next build rebuilds that shard."
            )
        return torch.from_numpy(array)

    # ---------------------------------------------------------------- building
    def _collect_items(self, rows, replacements):
        """``{utt_id: (path, duration or None)}`` in input order; duplicates must agree."""
        items = {}
        for row in rows:
            utt_id = row["ID"]
            path = resolve_path(row["wav"], replacements, utt_id)
            duration = (
                float(row["duration"])
                if row.get("duration") not in (None, "")
                else None
            )
            if utt_id in items and items[utt_id][0] != path:
                raise ValueError(
                    f"Utterance ID {utt_id} appears twice with different audio ({items[utt_id][0]} "
                    f"and {path}): IDs must be unique across the manifests given to one cache."
                )
            items[utt_id] = (path, duration)
        return items

    @contextlib.contextmanager
    def _build_lock(self):
        """Exclusive lock of the cache folder (waits for another builder to finish)."""
        os.makedirs(self.folder, exist_ok=True)
        with open(
            os.path.join(self.folder, LOCK_FILE), "a", encoding="utf-8"
        ) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info(
                    "Another process is building the feature cache %s: waiting for it.",
                    self.folder,
                )
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare_folder(self):
        """(Lock held) check key.json; drop dead builders' temporary shards and damaged shards."""
        key_path = os.path.join(self.folder, KEY_FILE)
        if os.path.isfile(key_path):
            try:
                with open(key_path, encoding="utf-8") as handle:
                    stored = json.load(handle)
            except ValueError:
                stored = None
                logger.warning("%s is unreadable: rewriting it.", key_path)
            if stored is None:
                atomic_write_text(
                    key_path,
                    json.dumps(self.key_fields, indent=2, sort_keys=True)
                    + "\n",
                )
            elif stored != json.loads(json.dumps(self.key_fields)):
                raise RuntimeError(
                    f"{key_path} does not describe this cache (key collision or edited file): "
                    "delete that folder and build again."
                )
        else:
            atomic_write_text(
                key_path,
                json.dumps(self.key_fields, indent=2, sort_keys=True) + "\n",
            )
        # With the lock held no other builder is writing: these belong to dead processes.
        for name in os.listdir(self.folder):
            if TEMPORARY_SHARD.fullmatch(name):
                os.remove(os.path.join(self.folder, name))
        complete = set()
        for name in self._shard_json_files():
            shard = int(SHARD_RECORD.fullmatch(name)[1])
            record, damage = self._check_record(shard)
            if record is None:
                logger.warning(
                    "Rebuilding a damaged feature-cache shard: %s.", damage
                )
                for extension in ("json", "damaged", "bin"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self._shard_path(shard, extension))
            else:
                complete.add(name[: -len(".json")])
        for name in os.listdir(self.folder):
            if (
                re.fullmatch(r"shard_\d+\.(bin|damaged)", name)
                and name.split(".")[0] not in complete
            ):
                os.remove(
                    os.path.join(self.folder, name)
                )  # a shard whose record was never written

    def _extract(self, wavs, wav_lens, device, ids):
        """Upstream features ``(B, nL, T', D)`` and absolute frame counts ``(B,)``."""
        autocast_dtype = AUTOCAST_DTYPES[self.precision]
        context = (
            torch.autocast(device_type=device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        try:
            with torch.no_grad(), context:
                feats, feat_lens = self.upstream(
                    wavs.to(device), wav_lens.to(device)
                )
        except Exception as error:
            raise RuntimeError(
                f"Feature extraction failed on the utterances {ids}: {error}"
            ) from error
        return feats, torch.round(feat_lens * feats.shape[2]).long()

    def build(
        self,
        rows,
        replacements=None,
        batch_size=8,
        device="cpu",
        num_workers=0,
        progressbar=True,
    ):
        """Extract and store the features of every utterance not cached yet.

        Arguments
        ---------
        rows : iterable of dict
            Manifest rows (from one or several CSVs) with ``ID`` and ``wav`` and,
            optionally, ``duration`` (read from the file header when missing).
        replacements : dict, optional
            Values of the path variables, e.g. ``{"data_root": data_folder,
            "prep_root": prep_folder}``.
        batch_size : int
            Utterances per upstream call.
        device : str or torch.device
            Where the upstream runs (it is moved there).
        num_workers : int
            DataLoader processes that read and crop the audio.
        progressbar : bool
            Show a tqdm bar.

        Returns
        -------
        str
            The cache folder.

        Raises
        ------
        ser_modules.audio.AudioError
            An audio file cannot be read (the message names it).
        """
        if self.upstream is None:
            raise RuntimeError(
                "This FeatureCache copy has no upstream (it was pickled): build it in the main process."
            )
        items = self._collect_items(rows, replacements or {})
        self.bind(rows, replacements)
        with self._build_lock():
            self._prepare_folder()
            cached = self._read_index()
            todo = [
                utt_id
                for utt_id in items
                if (utt_id, self._contents[utt_id]) not in cached
            ]
            if not todo:
                logger.info(
                    "All %d utterances are already cached in %s",
                    len(items),
                    self.folder,
                )
                return self.folder
            self._build_missing(
                items, todo, batch_size, device, num_workers, progressbar
            )
        return self.folder

    def _build_missing(
        self, items, todo, batch_size, device, num_workers, progressbar
    ):
        """(Lock held) extract the utterances ``todo`` into new shards."""
        durations = {}

        def sort_key(utt_id):
            path, duration = items[utt_id]
            duration = audio_info(path)[0] if duration is None else duration
            durations[utt_id] = duration
            if self.crop_seconds is not None:
                duration = min(duration, self.crop_seconds)
            return (-duration, utt_id)

        todo.sort(key=sort_key)
        existing = [
            int(SHARD_RECORD.fullmatch(name)[1])
            for name in self._shard_json_files()
        ]
        first_shard = max(existing, default=-1) + 1
        batches = []  # (shard number, indices into todo, last batch of the shard)
        for shard_start in range(0, len(todo), self.shard_size):
            shard_end = min(shard_start + self.shard_size, len(todo))
            for start in range(shard_start, shard_end, batch_size):
                end = min(start + batch_size, shard_end)
                shard = first_shard + shard_start // self.shard_size
                batches.append(
                    (shard, list(range(start, end)), end == shard_end)
                )

        # An utterance shorter than one frame is zero-padded to one: it would give no feature.
        min_samples = minimum_samples(self.upstream)
        dataset = WaveformDataset(
            [(utt_id, items[utt_id][0]) for utt_id in todo],
            seconds_to_samples(self.crop_seconds, self.sample_rate),
            self.crop_mode,
            self.sample_rate,
            min_samples=min_samples,
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[indices for _, indices, _ in batches],
            num_workers=num_workers,
            collate_fn=collate_waveforms,
        )
        device = torch.device(device)
        self.upstream.to(device)
        total_frames, total_seconds, writer = 0, 0.0, None
        progress = tqdm(
            zip(loader, batches),
            total=len(batches),
            disable=not progressbar,
            desc="Caching features",
        )
        try:
            for (ids, wavs, wav_lens), (shard, _, last_of_shard) in progress:
                if writer is None:
                    writer = ShardWriter(
                        self.folder, shard, self.dtype, paths=self._paths
                    )
                feats, frame_counts = self._extract(
                    wavs, wav_lens, device, ids
                )  # (B, nL, T', D)
                total_seconds += (
                    float(torch.round(wav_lens * wavs.shape[1]).sum())
                    / self.sample_rate
                )
                for utt_id, utterance, count in zip(
                    ids, feats, frame_counts.tolist()
                ):
                    # (T', nL, D), stored under the ID and the audio's content
                    writer.add(
                        utt_id,
                        utterance[:, :count].transpose(0, 1),
                        self._contents[utt_id],
                    )
                if last_of_shard:
                    total_frames += writer.commit()
                    writer = None
        finally:
            if writer is not None:
                writer.discard()
        self._read_index()
        padded = [
            utt_id
            for utt_id in todo
            if durations[utt_id] * self.sample_rate < min_samples
        ]
        if padded:
            logger.warning(
                "%d utterances were shorter than the %d samples the upstream needs for one "
                "frame: they were zero-padded to it (%s).",
                len(padded),
                min_samples,
                ", ".join(padded[:5]) + (" ..." if len(padded) > 5 else ""),
            )
        logger.info(
            "Cached the features of %d utterances (%.2f h of audio, %d frames) in %s; "
            "%d were already cached.",
            len(todo),
            total_seconds / 3600,
            total_frames,
            self.folder,
            len(items) - len(todo),
        )
