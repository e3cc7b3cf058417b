"""On-disk cache of frozen-upstream features, extracted once per utterance.

The upstream is frozen, so its features never change during training: a BAS search of
100 epochs or a 50-epoch fine-tuning can read them from disk instead of running WavLM
Large every epoch. The cache stores only the selected layers, in float16 by default.

Layout of ``<root>/<key>/``::

    key.json            # what the key hashes: upstream identity, crop, sample rate, dtype
    shard_00000.bin     # raw (frames, nL, D) array: the utterances of the shard, one after
    shard_00000.json    # the other along time, and their ids, offsets and frame counts

``key`` is a hash of :meth:`Upstream.identity` (model files by sha256, layers,
normalisation), the crop, the sample rate, the storage dtype and the compute precision,
so a different model, layer set or crop never reuses stale features.

A shard is complete when its ``.json`` exists: the ``.bin`` is written under a temporary
name, renamed, and the ``.json`` written last (atomically). A build that is killed keeps
its completed shards; the next build removes the partial one and extracts only the
utterances not cached yet. Utterances are sorted by duration (longest first, then by id)
before being cut into shards and batches, so a resumed build writes the same files as an
uninterrupted one, and batches hold utterances of similar length (little padding).

Reading memory-maps the shard and copies only the requested utterance.
"""

import contextlib
import hashlib
import json
import logging
import os
import re

import numpy as np
import torch
from speechbrain.utils.data_utils import batch_pad_right
from tqdm import tqdm

from ser_modules.audio import audio_info, crop_or_pad, load_audio, seconds_to_samples
from ser_modules.manifest import atomic_write_text

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KEY_FILE = "key.json"
NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# SpeechBrain's CSV variables: "$data_root/x.wav" with replacements={"data_root": ...}.
VARIABLE = re.compile(r"\$([\w.]+)")


def resolve_path(path, replacements, utt_id=None):
    """Replace the ``$name`` variables of a manifest path, as SpeechBrain's ``load_data_csv``.

    Arguments
    ---------
    path : str
        E.g. ``"$data_root/Session1/sentences/wav/x.wav"``.
    replacements : dict
        E.g. ``{"data_root": "/corpora/IEMOCAP_full_release", "prep_root": "/data/prep"}``.
    utt_id : str, optional
        Named in the error when a variable has no replacement.

    Returns
    -------
    str
    """

    def substitute(match):
        name = match[1]
        if name not in replacements:
            raise ValueError(
                f"The path {path!r} of utterance {utt_id} uses ${name} but replacements "
                f"only define {sorted(replacements)}: pass replacements={{'{name}': <folder>}}."
            )
        return str(replacements[name])

    return VARIABLE.sub(substitute, path)


def minimum_samples(upstream):
    """Samples an upstream needs to give one frame: its CNN's receptive field (400 for
    WavLM / HuBERT), 1 for upstreams that give a frame for any input (filterbanks)."""
    return int(getattr(upstream, "receptive_field", 1))


class WaveformDataset(torch.utils.data.Dataset):
    """Reads, resamples and crops the audio of ``(utt_id, path)`` items for extraction.

    Waveforms shorter than ``min_samples`` are zero-padded to it.
    """

    def __init__(self, items, num_samples, crop_mode, sample_rate, min_samples=None):
        self.items = items
        self.num_samples = num_samples
        self.crop_mode = crop_mode
        self.sample_rate = sample_rate
        self.min_samples = min_samples

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        utt_id, path = self.items[index]
        waveform = load_audio(path, self.sample_rate)  # (T,); AudioError names the file
        return utt_id, crop_or_pad(waveform, self.num_samples, self.crop_mode, min_samples=self.min_samples)


def collate_waveforms(batch):
    """``[(utt_id, (T_i,))]`` -> ``(ids, (B, T) padded, (B,) relative lengths)``."""
    ids = [utt_id for utt_id, _ in batch]
    wavs, wav_lens = batch_pad_right([waveform for _, waveform in batch])
    return ids, wavs, torch.as_tensor(wav_lens, dtype=torch.float32)


class ShardWriter:
    """Streams utterance features into ``.tmp_shard_N.bin``; :meth:`commit` publishes it.

    Only one batch is in memory at a time. The ``.bin`` is renamed into place first and
    the ``.json`` index written last, so a shard with a ``.json`` is always complete.
    """

    def __init__(self, folder, shard, dtype):
        self.folder = folder
        self.name = f"shard_{shard:05d}"
        self.dtype = dtype
        self.tmp_path = os.path.join(folder, f".tmp_{self.name}.bin")
        self.file = open(self.tmp_path, "wb")
        self.record = {"ids": [], "offsets": [], "lengths": [], "num_frames": 0}

    def add(self, utt_id, frames):
        """Append one utterance's ``(T', nL, D)`` features (any device and float dtype)."""
        frames = frames.to(self.dtype)
        if not torch.isfinite(frames).all():
            raise ValueError(
                f"The features of utterance {utt_id} overflow {self.dtype}: build the cache "
                "with dtype=torch.float32."
            )
        self.file.write(frames.cpu().numpy().tobytes())  # C order: (T', nL, D)
        self.record["ids"].append(utt_id)
        self.record["offsets"].append(self.record["num_frames"])
        self.record["lengths"].append(frames.shape[0])
        self.record["num_frames"] += frames.shape[0]
        self.record["num_layers"], self.record["dim"] = frames.shape[1], frames.shape[2]

    def commit(self):
        """Make the shard durable and visible; returns its frame count."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp_path, os.path.join(self.folder, f"{self.name}.bin"))
        self.record["dtype"] = str(self.dtype).replace("torch.", "")
        atomic_write_text(os.path.join(self.folder, f"{self.name}.json"), json.dumps(self.record) + "\n")
        return self.record["num_frames"]

    def close(self):
        """Close without publishing (the ``.tmp`` file is removed by the next build)."""
        self.file.close()


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
            raise ValueError(f"Unsupported cache dtype {dtype}: use torch.float16 or torch.float32.")
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"Unknown precision {precision!r}: use one of {sorted(AUTOCAST_DTYPES)}.")
        self.upstream = upstream
        self.crop_seconds = crop_seconds if crop_seconds and crop_seconds > 0 else None
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
        self._index = None  # utt_id -> (shard number, frame offset, frame count)
        self._num_shards_read = 0
        self._memmaps = {}
        self._shard_shapes = {}

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
        return sorted(name for name in os.listdir(self.folder) if re.fullmatch(r"shard_\d+\.json", name))

    def _read_index(self):
        index = {}
        names = self._shard_json_files()
        for name in names:
            shard = int(name[len("shard_") : -len(".json")])
            with open(os.path.join(self.folder, name), encoding="utf-8") as handle:
                record = json.load(handle)
            self._shard_shapes[shard] = (record["num_frames"], record["num_layers"], record["dim"])
            for utt_id, offset, length in zip(record["ids"], record["offsets"], record["lengths"]):
                index[utt_id] = (shard, offset, length)
        self._index = index
        self._num_shards_read = len(names)
        return index

    def _refresh_index(self):
        """Read the index if it was never read or if shards appeared since."""
        if self._index is None or len(self._shard_json_files()) != self._num_shards_read:
            self._read_index()
        return self._index

    def _lookup(self, utt_id):
        """Index entry of ``utt_id`` (the index is re-read on a miss only: loads stay cheap)."""
        if self._index is None or utt_id not in self._index:
            self._refresh_index()
        return self._index.get(utt_id)

    def has(self, utt_id):
        """Whether the features of ``utt_id`` are cached."""
        return self._lookup(utt_id) is not None

    def __contains__(self, utt_id):
        return self.has(utt_id)

    def __len__(self):
        return len(self._refresh_index())

    def load(self, utt_id):
        """Cached features of one utterance.

        Arguments
        ---------
        utt_id : str
            The manifest ID.

        Returns
        -------
        torch.Tensor
            ``(T', nL, D)`` in the storage dtype (float16 by default): time first, so that
            SpeechBrain's ``PaddedBatch`` pads along time and gives relative lengths;
            permute the batch to ``(B, nL, T', D)`` for the downstream.
        """
        entry = self._lookup(utt_id)
        if entry is None:
            raise KeyError(
                f"No cached features for utterance {utt_id!r} in {self.folder}: run "
                "FeatureCache.build on the manifests that contain it."
            )
        shard, offset, length = entry
        if shard not in self._memmaps:
            self._memmaps[shard] = np.memmap(
                os.path.join(self.folder, f"shard_{shard:05d}.bin"),
                dtype=NUMPY_DTYPES[self.dtype],
                mode="r",
                shape=self._shard_shapes[shard],
            )
        return torch.from_numpy(np.array(self._memmaps[shard][offset : offset + length]))

    # ---------------------------------------------------------------- building
    def _collect_items(self, rows, replacements):
        """``{utt_id: (path, duration or None)}`` in input order; duplicates must agree."""
        items = {}
        for row in rows:
            utt_id = row["ID"]
            path = resolve_path(row["wav"], replacements, utt_id)
            duration = float(row["duration"]) if row.get("duration") not in (None, "") else None
            if utt_id in items and items[utt_id][0] != path:
                raise ValueError(
                    f"Utterance ID {utt_id} appears twice with different audio ({items[utt_id][0]} "
                    f"and {path}): IDs must be unique across the manifests given to one cache."
                )
            items[utt_id] = (path, duration)
        return items

    def _prepare_folder(self):
        """Create the folder and key.json; drop the files of an interrupted shard."""
        key_path = os.path.join(self.folder, KEY_FILE)
        if os.path.isfile(key_path):
            with open(key_path, encoding="utf-8") as handle:
                stored = json.load(handle)
            if stored != json.loads(json.dumps(self.key_fields)):
                raise RuntimeError(
                    f"{key_path} does not describe this cache (key collision or edited file): "
                    "delete that folder and build again."
                )
        else:
            atomic_write_text(key_path, json.dumps(self.key_fields, indent=2, sort_keys=True) + "\n")
        complete = {name[: -len(".json")] for name in self._shard_json_files()}
        for name in os.listdir(self.folder):
            stem = name.split(".")[0]
            partial_shard = name.endswith(".bin") and stem not in complete
            if name.startswith(".tmp") or partial_shard:
                os.remove(os.path.join(self.folder, name))

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
                feats, feat_lens = self.upstream(wavs.to(device), wav_lens.to(device))
        except Exception as error:
            raise RuntimeError(f"Feature extraction failed on the utterances {ids}: {error}") from error
        return feats, torch.round(feat_lens * feats.shape[2]).long()

    def build(
        self, rows, replacements=None, batch_size=8, device="cpu", num_workers=0, progressbar=True
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
        cached = self._read_index()
        todo = [utt_id for utt_id in items if utt_id not in cached]
        if not todo:
            logger.info("All %d utterances are already cached in %s", len(items), self.folder)
            return self.folder
        os.makedirs(self.folder, exist_ok=True)
        self._prepare_folder()

        durations = {}

        def sort_key(utt_id):
            path, duration = items[utt_id]
            duration = audio_info(path)[0] if duration is None else duration
            durations[utt_id] = duration
            if self.crop_seconds is not None:
                duration = min(duration, self.crop_seconds)
            return (-duration, utt_id)

        todo.sort(key=sort_key)
        existing = [int(name[len("shard_") : -len(".json")]) for name in self._shard_json_files()]
        first_shard = max(existing, default=-1) + 1
        batches = []  # (shard number, indices into todo, last batch of the shard)
        for shard_start in range(0, len(todo), self.shard_size):
            shard_end = min(shard_start + self.shard_size, len(todo))
            for start in range(shard_start, shard_end, batch_size):
                end = min(start + batch_size, shard_end)
                shard = first_shard + shard_start // self.shard_size
                batches.append((shard, list(range(start, end)), end == shard_end))

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
            zip(loader, batches), total=len(batches), disable=not progressbar, desc="Caching features"
        )
        try:
            for (ids, wavs, wav_lens), (shard, _, last_of_shard) in progress:
                if writer is None:
                    writer = ShardWriter(self.folder, shard, self.dtype)
                feats, frame_counts = self._extract(wavs, wav_lens, device, ids)  # (B, nL, T', D)
                total_seconds += float(torch.round(wav_lens * wavs.shape[1]).sum()) / self.sample_rate
                for utt_id, utterance, count in zip(ids, feats, frame_counts.tolist()):
                    writer.add(utt_id, utterance[:, :count].transpose(0, 1))  # (T', nL, D)
                if last_of_shard:
                    total_frames += writer.commit()
                    writer = None
        finally:
            if writer is not None:
                writer.close()
        self._read_index()
        padded = [utt_id for utt_id in todo if durations[utt_id] * self.sample_rate < min_samples]
        if padded:
            logger.warning(
                "%d utterances were shorter than the %d samples the upstream needs for one "
                "frame: they were zero-padded to it (%s).",
                len(padded), min_samples, ", ".join(padded[:5]) + (" ..." if len(padded) > 5 else ""),
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
        return self.folder
