"""Specification of the on-disk feature cache (ser_modules.feature_cache).

Fixtures: a few random wav files under a data folder, manifest rows with ``$data_root``
paths, the Fbank upstream (fast) and a tiny random WavLM saved to a tmp folder.
"""

import json
import os

import numpy as np
import pytest
import soundfile
import torch
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

from ser_modules.audio import AudioError, load_audio
from ser_modules.feature_cache import FeatureCache
from ser_modules.manifest import resolve_path
from ser_modules.upstreams import FbankUpstream, HuggingFaceUpstream

SAMPLE_RATE = 16000


def write_corpus(folder, durations, seed=0):
    """Random float wav files ``utt{i}.wav`` and their manifest rows (``$data_root`` paths)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    rows = []
    for index, seconds in enumerate(durations):
        name = f"utt{index}.wav"
        samples = (
            rng.standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32)
            * 0.1
        )
        soundfile.write(
            os.path.join(folder, name), samples, SAMPLE_RATE, subtype="FLOAT"
        )
        rows.append(
            {
                "ID": f"utt{index}",
                "duration": str(seconds),
                "wav": f"$data_root/{name}",
            }
        )
    return rows


def save_tiny_wavlm(folder, seed=0):
    """A 2-layer, 32-dim random WavLM with a layer-norm CNN (hop 320 like the real one)."""
    config = WavLMConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(400, 1),
        conv_stride=(320, 1),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_buckets=32,
        max_bucket_distance=64,
    )
    torch.manual_seed(seed)
    WavLMModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return str(folder)


class FailingFbank(FbankUpstream):
    """Fbank upstream (same identity, so same cache key) that raises on call ``fail_at``."""

    def __init__(self, fail_at, **kwargs):
        super().__init__(**kwargs)
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, wavs, wav_lens=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        return super().forward(wavs, wav_lens)


def folder_contents(folder):
    """``{file name: bytes}`` of a cache folder."""
    contents = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as handle:
            contents[name] = handle.read()
    return contents


def modification_times(folder):
    """``{file name: mtime in ns}`` of a cache folder."""
    return {
        name: os.stat(os.path.join(folder, name)).st_mtime_ns
        for name in os.listdir(folder)
    }


@pytest.fixture()
def corpus(tmp_path):
    data_folder = tmp_path / "corpus"
    rows = write_corpus(
        data_folder, [0.31, 0.52, 0.18, 0.44, 0.25, 0.52, 0.37, 0.29, 0.41, 0.2]
    )
    return rows, {"data_root": str(data_folder)}


def test_cached_features_equal_the_upstream_on_each_utterance_alone(
    tmp_path, corpus
):
    rows, replacements = corpus
    upstream = HuggingFaceUpstream(
        save_tiny_wavlm(tmp_path / "wavlm"), layers=[0, 2]
    )
    cache = FeatureCache(tmp_path / "cache", upstream, shard_size=4)
    cache.build(rows, replacements, batch_size=3, progressbar=False)
    assert len(cache) == len(rows)
    for row in rows:
        waveform = load_audio(resolve_path(row["wav"], replacements))
        expected, _ = upstream(waveform[None])  # (1, 2, T', 32)
        cached = cache.load(row["ID"])  # (T', 2, 32)
        assert cached.dtype == torch.float16
        torch.testing.assert_close(
            cached.float(), expected[0].transpose(0, 1), rtol=1e-3, atol=1e-3
        )


def test_crop_keeps_the_first_seconds(tmp_path, corpus):
    rows, replacements = corpus
    upstream = FbankUpstream(n_mels=20)
    cache = FeatureCache(
        tmp_path / "cache", upstream, crop_seconds=0.25, dtype=torch.float32
    )
    cache.build(rows, replacements, progressbar=False)
    waveform = load_audio(resolve_path(rows[1]["wav"], replacements))[:4000]
    expected, _ = upstream(waveform[None])
    torch.testing.assert_close(cache.load("utt1"), expected[0].transpose(0, 1))
    assert cache.load("utt2").shape == (
        19,
        1,
        20,
    )  # 0.18 s is shorter: 2880 // 160 + 1 frames


def test_key_changes_with_model_layers_crop_and_dtype(tmp_path):
    folder = save_tiny_wavlm(tmp_path / "a", seed=0)
    other_weights = save_tiny_wavlm(tmp_path / "b", seed=1)
    base = FeatureCache(tmp_path, HuggingFaceUpstream(folder)).key
    assert FeatureCache(tmp_path, HuggingFaceUpstream(folder)).key == base
    variants = [
        FeatureCache(tmp_path, HuggingFaceUpstream(other_weights)),
        FeatureCache(tmp_path, HuggingFaceUpstream(folder, layers="last")),
        FeatureCache(tmp_path, HuggingFaceUpstream(folder), crop_seconds=3.0),
        FeatureCache(
            tmp_path,
            HuggingFaceUpstream(folder),
            crop_seconds=3.0,
            crop_mode="center",
        ),
        FeatureCache(
            tmp_path, HuggingFaceUpstream(folder), dtype=torch.float32
        ),
        FeatureCache(tmp_path, HuggingFaceUpstream(folder), precision="bf16"),
    ]
    keys = [cache.key for cache in variants]
    assert base not in keys and len(set(keys)) == len(keys)


def test_key_json_describes_the_cache(tmp_path, corpus):
    rows, replacements = corpus
    cache = FeatureCache(
        tmp_path / "cache", FbankUpstream(n_mels=20), crop_seconds=0.3
    )
    cache.build(rows[:2], replacements, progressbar=False)
    with open(
        os.path.join(cache.folder, "key.json"), encoding="utf-8"
    ) as handle:
        described = json.load(handle)
    assert os.path.basename(cache.folder) == cache.key
    assert (
        described["upstream"]["kind"] == "fbank"
        and described["upstream"]["n_mels"] == 20
    )
    assert (
        described["crop_seconds"],
        described["crop_mode"],
        described["dtype"],
    ) == (0.3, "first", "float16")


def test_resume_after_an_interruption_writes_the_same_files(tmp_path, corpus):
    rows, replacements = corpus
    reference = FeatureCache(
        tmp_path / "reference", FbankUpstream(n_mels=20), shard_size=4
    )
    reference.build(rows, replacements, batch_size=2, progressbar=False)

    # shards of 4 utterances = 2 batches: the 4th call dies inside the second shard
    interrupted = FeatureCache(
        tmp_path / "resumed", FailingFbank(fail_at=4, n_mels=20), shard_size=4
    )
    with pytest.raises(KeyboardInterrupt):
        interrupted.build(rows, replacements, batch_size=2, progressbar=False)
    assert (
        len(interrupted) == 4
    )  # the first shard survived, the partial one did not count
    resumed = FeatureCache(
        tmp_path / "resumed", FbankUpstream(n_mels=20), shard_size=4
    )
    resumed.build(rows, replacements, batch_size=2, progressbar=False)
    assert folder_contents(resumed.folder) == folder_contents(reference.folder)


def test_second_build_is_a_no_op(tmp_path, corpus):
    rows, replacements = corpus
    FeatureCache(tmp_path, FbankUpstream(n_mels=20), shard_size=4).build(
        rows, replacements, progressbar=False
    )
    never_called = FailingFbank(fail_at=1, n_mels=20)
    cache = FeatureCache(tmp_path, never_called, shard_size=4)
    before = modification_times(cache.folder)
    cache.build(rows, replacements, progressbar=False)
    after = modification_times(cache.folder)
    assert never_called.calls == 0 and after == before


def test_build_adds_only_the_missing_utterances_of_new_manifests(
    tmp_path, corpus
):
    rows, replacements = corpus
    cache = FeatureCache(tmp_path, FbankUpstream(n_mels=20), shard_size=4)
    cache.build(rows[:6], replacements, progressbar=False)
    assert len(cache) == 6 and not cache.has("utt7")
    counting = FailingFbank(fail_at=-1, n_mels=20)
    FeatureCache(tmp_path, counting, shard_size=4).build(
        rows, replacements, batch_size=8, progressbar=False
    )
    assert counting.calls == 1  # one batch: the 4 new utterances
    cache.bind(
        rows, replacements
    )  # a reader is told which audio each ID stands for
    assert (
        cache.has("utt7") and len(cache) == 10
    )  # a reader sees shards written after it opened


def test_batches_are_sorted_by_duration_longest_first(tmp_path, corpus):
    rows, replacements = corpus
    cache = FeatureCache(tmp_path, FbankUpstream(n_mels=20), shard_size=4)
    cache.build(rows, replacements, progressbar=False)
    with open(
        os.path.join(cache.folder, "shard_00000.json"), encoding="utf-8"
    ) as handle:
        first_shard = json.load(handle)
    assert first_shard["ids"] == [
        "utt1",
        "utt5",
        "utt3",
        "utt8",
    ]  # 0.52, 0.52 (by id), 0.44, 0.41


def test_unreadable_audio_raises_with_the_file_name(tmp_path, corpus):
    rows, replacements = corpus
    broken = os.path.join(replacements["data_root"], "broken.wav")
    with open(broken, "wb") as handle:
        handle.write(b"RIFF not really a wav")
    rows = rows[:2] + [
        {"ID": "broken", "duration": "1.0", "wav": "$data_root/broken.wav"}
    ]
    cache = FeatureCache(tmp_path, FbankUpstream(n_mels=20))
    with pytest.raises(AudioError, match="broken.wav"):
        cache.build(rows, replacements, progressbar=False)


def test_missing_path_variable_names_the_utterance(tmp_path, corpus):
    rows, _ = corpus
    cache = FeatureCache(tmp_path, FbankUpstream(n_mels=20))
    with pytest.raises(ValueError, match=r"utt0 uses \$data_root"):
        cache.build(rows, {"prep_root": "/x"}, progressbar=False)


def test_load_of_an_unknown_utterance_raises_key_error(tmp_path):
    cache = FeatureCache(tmp_path, FbankUpstream(n_mels=20))
    with pytest.raises(KeyError, match="nope"):
        cache.load("nope")


def test_random_crop_cannot_be_cached(tmp_path):
    with pytest.raises(ValueError, match="random"):
        FeatureCache(
            tmp_path, FbankUpstream(), crop_seconds=1.0, crop_mode="random"
        )


def test_two_corpora_with_the_same_file_names_never_share_features(tmp_path):
    rows_a = write_corpus(tmp_path / "a", [0.3, 0.4, 0.5], seed=0)
    rows_b = write_corpus(
        tmp_path / "b", [0.3, 0.4, 0.5], seed=1
    )  # same IDs and names, other audio
    assert rows_a == rows_b
    upstream = FbankUpstream(n_mels=20)
    FeatureCache(tmp_path / "cache", upstream, dtype=torch.float32).build(
        rows_a, {"data_root": str(tmp_path / "a")}, progressbar=False
    )
    cache_b = FeatureCache(tmp_path / "cache", upstream, dtype=torch.float32)
    cache_b.build(rows_b, {"data_root": str(tmp_path / "b")}, progressbar=False)
    for row in rows_b:
        expected, _ = upstream(
            load_audio(os.path.join(tmp_path, "b", row["wav"].split("/")[-1]))[
                None
            ]
        )
        torch.testing.assert_close(
            cache_b.load(row["ID"]), expected[0].transpose(0, 1)
        )


def test_a_file_re_recorded_in_place_is_extracted_again(tmp_path, corpus):
    rows, replacements = corpus
    upstream = FbankUpstream(n_mels=20)
    FeatureCache(tmp_path / "cache", upstream, dtype=torch.float32).build(
        rows, replacements, progressbar=False
    )
    path = resolve_path(rows[0]["wav"], replacements)
    soundfile.write(
        path,
        np.full(4000, 0.05, dtype=np.float32),
        SAMPLE_RATE,
        subtype="FLOAT",
    )
    counting = FailingFbank(fail_at=-1, n_mels=20)
    cache = FeatureCache(tmp_path / "cache", counting, dtype=torch.float32)
    cache.build(rows, replacements, progressbar=False)
    assert counting.calls == 1
    expected, _ = upstream(load_audio(path)[None])
    torch.testing.assert_close(
        cache.load(rows[0]["ID"]), expected[0].transpose(0, 1)
    )


def shard_files(cache, extension):
    return sorted(
        os.path.join(cache.folder, n)
        for n in os.listdir(cache.folder)
        if n.endswith("." + extension) and n.startswith("shard_")
    )


def test_a_corrupted_shard_region_is_reported_by_path_and_rebuilt(
    tmp_path, corpus
):
    rows, replacements = corpus
    cache = FeatureCache(tmp_path, FbankUpstream(n_mels=20), shard_size=4)
    cache.build(rows, replacements, progressbar=False)
    reference = {row["ID"]: cache.load(row["ID"]) for row in rows}
    first_bin = shard_files(cache, "bin")[0]
    with open(first_bin, "r+b") as handle:  # same size, garbage inside
        handle.seek(40)
        handle.write(b"\xff" * 64)
    damaged = FeatureCache(tmp_path, FbankUpstream(n_mels=20), shard_size=4)
    damaged.bind(rows, replacements)
    with pytest.raises(Exception, match=first_bin) as error:
        for row in rows:
            damaged.load(row["ID"])
    assert "checksum" in str(error.value)
    rebuilt = FeatureCache(tmp_path, FbankUpstream(n_mels=20), shard_size=4)
    rebuilt.build(rows, replacements, progressbar=False)
    for row in rows:
        torch.testing.assert_close(
            rebuilt.load(row["ID"]), reference[row["ID"]]
        )


@pytest.mark.parametrize("damage", ["truncate_bin", "truncate_record"])
def test_a_truncated_shard_or_record_is_reported_by_path_and_rebuilt(
    tmp_path, corpus, caplog, damage
):
    rows, replacements = corpus
    cache = FeatureCache(tmp_path, FbankUpstream(n_mels=20), shard_size=4)
    cache.build(rows, replacements, progressbar=False)
    reference = {row["ID"]: cache.load(row["ID"]) for row in rows}
    target = shard_files(cache, "bin" if damage == "truncate_bin" else "json")[
        1
    ]
    with open(target, "r+b") as handle:
        handle.truncate(os.path.getsize(target) // 2)
    rebuilt = FeatureCache(tmp_path, FbankUpstream(n_mels=20), shard_size=4)
    with caplog.at_level("WARNING"):
        rebuilt.build(rows, replacements, progressbar=False)
    assert target in caplog.text
    for row in rows:
        torch.testing.assert_close(
            rebuilt.load(row["ID"]), reference[row["ID"]]
        )


CONCURRENT_BUILDER = """
import os, sys, time, torch
from ser_modules.feature_cache import FeatureCache
from ser_modules.upstreams import FbankUpstream

class SlowFbank(FbankUpstream):
    def forward(self, wavs, wav_lens=None):
        time.sleep(0.1)
        return super().forward(wavs, wav_lens)

rows = {rows!r}
open({go!r} + "_ready_" + sys.argv[1], "w").close()
while not os.path.exists({go!r}):
    time.sleep(0.01)
cache = FeatureCache({root!r}, SlowFbank(n_mels=20), shard_size=3)
cache.build(rows, {{"data_root": {corpus!r}}}, batch_size=1, progressbar=False)
assert len(cache) == len(rows)
print("built", sum(float(cache.load(r["ID"]).float().sum()) for r in rows))
"""


def test_two_processes_building_one_cache_both_end_with_the_sequential_result(
    tmp_path,
):
    import subprocess
    import sys

    corpus = str(tmp_path / "corpus")
    sequential = tmp_path / "sequential"
    rows = write_corpus(corpus, [0.31, 0.52, 0.18, 0.44, 0.25, 0.52, 0.37])
    FeatureCache(sequential, FbankUpstream(n_mels=20), shard_size=3).build(
        rows, {"data_root": corpus}, batch_size=1, progressbar=False
    )
    go = str(tmp_path / "go")
    script = CONCURRENT_BUILDER.format(
        rows=rows, corpus=corpus, go=go, root=str(tmp_path / "shared")
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        for n in (1, 2)
    ]
    import time

    deadline = time.time() + 120
    while (
        not all(os.path.exists(f"{go}_ready_{n}") for n in (1, 2))
        and time.time() < deadline
    ):
        time.sleep(0.05)  # both imported: start them together
    open(go, "w").close()
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    assert outputs[0].splitlines()[-1] == outputs[1].splitlines()[-1]
    shared = FeatureCache(
        tmp_path / "shared", FbankUpstream(n_mels=20), shard_size=3
    )
    reference = FeatureCache(sequential, FbankUpstream(n_mels=20), shard_size=3)

    def contents(folder):
        return {
            name: data
            for name, data in folder_contents(folder).items()
            if name != ".lock"
        }

    assert contents(shared.folder) == contents(reference.folder)


class NaNFbank(FbankUpstream):
    def forward(self, wavs, wav_lens=None):
        feats, lens = super().forward(wavs, wav_lens)
        return feats * float("nan"), lens


def test_nan_features_are_refused_naming_the_utterance_and_its_file(
    tmp_path, corpus
):
    rows, replacements = corpus
    cache = FeatureCache(tmp_path, NaNFbank(n_mels=20))
    with pytest.raises(
        ValueError,
        match=r"NaN or infinite features for utterance utt\d+ \(.*utt\d+\.wav\)",
    ) as error:
        cache.build(rows, replacements, progressbar=False)
    assert "float32" not in str(
        error.value
    )  # no advice about a cache type no option sets
