"""Specification of the openSMILE upstream (ser_modules.upstreams.opensmile).

The reference is the ``opensmile`` package itself, run on each utterance alone: the
upstream must give exactly its low-level descriptors for the valid frames of every
utterance of a padded batch, zeros past them, and relative lengths that recover the
frame counts; the feature cache must store those features under a key of their own.
"""

import json
import os
import warnings

import numpy as np
import opensmile
import pytest
import soundfile
import torch

from ser_modules.audio import load_audio
from ser_modules.feature_cache import FeatureCache
from ser_modules.manifest import resolve_path
from ser_modules.upstreams import (
    FbankUpstream,
    FeatureUpstream,
    OpenSmileUpstream,
    build_feature_upstream,
    build_upstream,
    minimum_samples,
)
from ser_modules.upstreams.opensmile import (
    functional_names,
    opensmile_functionals,
)

SAMPLE_RATE = 16000
LENGTHS = [16000, 9871, 4000]  # samples; the longest sets the padded length
SETS = {
    "egemaps": (opensmile.FeatureSet.eGeMAPSv02, 25, 88),
    "compare": (opensmile.FeatureSet.ComParE_2016, 65, 6373),
}


def reference(
    signal,
    feature_set="egemaps",
    level=opensmile.FeatureLevel.LowLevelDescriptors,
):
    """The opensmile package on one unpadded numpy signal: ``(frames, features)``."""
    smile = opensmile.Smile(
        feature_set=SETS[feature_set][0], feature_level=level
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            smile.process_signal(signal, SAMPLE_RATE)
            .to_numpy()
            .astype(np.float32)
        )


def random_batch(seed=0):
    """A right-padded batch of noisy harmonic signals of ``LENGTHS`` and their relative lengths."""
    rng = np.random.default_rng(seed)
    wavs = torch.zeros(len(LENGTHS), max(LENGTHS))
    for index, length in enumerate(LENGTHS):
        t = np.arange(length) / SAMPLE_RATE
        tone = 0.3 * np.sin(
            2 * np.pi * (140 + 40 * index) * t
        ) + 0.05 * rng.standard_normal(length)
        wavs[index, :length] = torch.from_numpy(tone.astype(np.float32))
        wavs[index, length:] = (
            0.5  # garbage padding: must not reach any feature
        )
    return wavs, torch.tensor(LENGTHS, dtype=torch.float32) / max(LENGTHS)


@pytest.mark.parametrize("feature_set", ["egemaps", "compare"])
def test_each_utterance_of_a_padded_batch_equals_opensmile_alone(feature_set):
    upstream = OpenSmileUpstream(feature_set)
    wavs, wav_lens = random_batch()
    feats, feat_lens = upstream(wavs, wav_lens)
    dim = SETS[feature_set][1]
    assert upstream.output_dim == dim and upstream.num_layers == 1
    assert feats.shape == (
        len(LENGTHS),
        1,
        upstream.num_frames(max(LENGTHS)),
        dim,
    )
    for index, length in enumerate(LENGTHS):
        expected = reference(wavs[index, :length].numpy(), feature_set)
        frames = int(torch.round(feat_lens[index] * feats.shape[2]))
        assert frames == expected.shape[0] == upstream.num_frames(length)
        np.testing.assert_allclose(
            feats[index, 0, :frames].numpy(), expected, rtol=1e-5, atol=1e-5
        )
        assert torch.all(feats[index, 0, frames:] == 0)


def test_frame_count_formula_matches_opensmile_for_every_length_regime():
    upstream = OpenSmileUpstream("egemaps")
    rng = np.random.default_rng(1)
    # below one 60 ms window, at it, around each 10 ms step
    for length in [
        500,
        959,
        960,
        961,
        1119,
        1120,
        1121,
        1599,
        1600,
        1601,
        5003,
        16160,
    ]:
        signal = (0.1 * rng.standard_normal(length)).astype(np.float32)
        expected = reference(signal)
        count = 0 if np.isnan(expected).all() else expected.shape[0]
        assert upstream.num_frames(length) == count, length
        assert int(upstream.num_frames(torch.tensor([length]))[0]) == count
    assert (
        minimum_samples(upstream) == 960
    )  # the cache and the data pipeline pad to it


def test_hop_of_20_ms_averages_each_pair_of_10_ms_frames():
    upstream = OpenSmileUpstream("egemaps", hop_length=20)
    wavs, wav_lens = random_batch(seed=2)
    feats, feat_lens = upstream(wavs, wav_lens)
    assert upstream.frame_rate == 50
    for index, length in enumerate(LENGTHS):
        lld = reference(wavs[index, :length].numpy())  # (T, 25)
        groups = [
            lld[start : start + 2].mean(axis=0)
            for start in range(0, lld.shape[0], 2)
        ]
        frames = int(torch.round(feat_lens[index] * feats.shape[2]))
        assert frames == len(groups) == upstream.num_frames(length)
        np.testing.assert_allclose(
            feats[index, 0, :frames].numpy(),
            np.stack(groups),
            rtol=1e-5,
            atol=1e-5,
        )


def test_hop_must_be_a_multiple_of_10_ms():
    with pytest.raises(ValueError, match="multiple of 10 ms"):
        OpenSmileUpstream("egemaps", hop_length=25)


def test_functionals_equal_opensmile_and_name_every_value():
    wavs, _ = random_batch(seed=3)
    signal = wavs[1, : LENGTHS[1]]
    for feature_set, (_, _, count) in SETS.items():
        values = opensmile_functionals(signal, SAMPLE_RATE, feature_set)
        expected = reference(
            signal.numpy(), feature_set, opensmile.FeatureLevel.Functionals
        )[0]
        assert (
            values.shape == (count,)
            and len(functional_names(feature_set)) == count
        )
        np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_identity_and_cache_key_differ_per_feature_set_and_hop(tmp_path):
    identities = [
        OpenSmileUpstream("egemaps").identity(),
        OpenSmileUpstream("compare").identity(),
        OpenSmileUpstream("egemaps", hop_length=20).identity(),
        FbankUpstream().identity(),
    ]
    assert all(
        json.loads(json.dumps(identity)) == identity for identity in identities
    )
    assert OpenSmileUpstream("egemaps").identity() == identities[0]  # stable
    assert identities[0]["opensmile_version"] == opensmile.__version__
    keys = [
        FeatureCache(tmp_path, build_feature_upstream(kind, hop_length=hop)).key
        for kind, hop in [
            ("egemaps", 10),
            ("compare", 10),
            ("egemaps", 20),
            ("fbank", 10),
        ]
    ]
    assert len(set(keys)) == len(keys)
    assert FeatureCache(tmp_path, OpenSmileUpstream("egemaps")).key == keys[0]


def test_feature_cache_stores_the_upstream_features_of_each_utterance(tmp_path):
    rng = np.random.default_rng(4)
    rows = []
    for index, seconds in enumerate(
        [0.5, 0.05, 0.83]
    ):  # 0.05 s: shorter than one window
        samples = (
            0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))
        ).astype(np.float32)
        soundfile.write(
            tmp_path / f"utt{index}.wav", samples, SAMPLE_RATE, subtype="FLOAT"
        )
        rows.append(
            {
                "ID": f"utt{index}",
                "duration": str(seconds),
                "wav": f"$data_root/utt{index}.wav",
            }
        )
    replacements = {"data_root": str(tmp_path)}
    upstream = OpenSmileUpstream("egemaps", hop_length=20)
    cache = FeatureCache(tmp_path / "cache", upstream, dtype=torch.float32)
    cache.build(rows, replacements, batch_size=2, progressbar=False)
    for row in rows:
        waveform = load_audio(resolve_path(row["wav"], replacements))
        waveform = torch.nn.functional.pad(
            waveform, (0, max(0, 960 - waveform.shape[0]))
        )
        expected, _ = upstream(waveform[None])  # (1, 1, T', 25)
        cached = cache.load(row["ID"])  # (T', 1, 25)
        assert cached.shape[0] >= 1
        torch.testing.assert_close(cached, expected[0].transpose(0, 1))
    with open(
        os.path.join(cache.folder, "key.json"), encoding="utf-8"
    ) as handle:
        assert json.load(handle)["upstream"]["feature_set"] == "eGeMAPSv02"


def test_one_hparam_switches_the_feature_upstream():
    assert isinstance(build_feature_upstream("fbank"), FbankUpstream)
    egemaps = build_feature_upstream("egemaps", hop_length=20)
    assert (
        isinstance(egemaps, OpenSmileUpstream)
        and egemaps.output_dim == 25
        and egemaps.hop_length == 320
    )
    assert build_feature_upstream("compare").output_dim == 65
    assert isinstance(build_upstream("egemaps"), OpenSmileUpstream)
    with pytest.raises(ValueError, match="Unknown features"):
        build_feature_upstream("mfcc")
    with pytest.raises(ValueError, match="Fbank option"):
        build_feature_upstream("egemaps", normalize=True)


def test_upstream_stays_frozen():
    upstream = OpenSmileUpstream("egemaps")
    upstream.train()
    assert not upstream.training and not any(
        p.requires_grad for p in upstream.parameters()
    )


@pytest.mark.parametrize("features", ["fbank", "egemaps"])
def test_feature_upstream_class_is_the_chosen_upstream_with_its_cache_key(
    features, tmp_path
):
    switched = FeatureUpstream(features, hop_length=20)
    direct = build_feature_upstream(features, hop_length=20)
    assert switched.identity() == direct.identity()
    assert (
        FeatureCache(tmp_path, switched).key
        == FeatureCache(tmp_path, direct).key
    )
    assert (
        switched.output_dim,
        switched.hop_length,
        minimum_samples(switched),
    ) == (direct.output_dim, direct.hop_length, minimum_samples(direct))
    wavs, wav_lens = random_batch(seed=5)
    for mine, theirs in zip(switched(wavs, wav_lens), direct(wavs, wav_lens)):
        torch.testing.assert_close(mine, theirs)
    assert int(switched.num_frames(12345)) == int(direct.num_frames(12345))


def test_build_upstream_by_kind_takes_the_ssl_files_empty_normalize_and_refuses_a_set_one():
    # shiftformer.yaml / speechformer.yaml pass normalize: null to every kind
    upstream = build_upstream("egemaps", normalize=None)
    assert isinstance(upstream, OpenSmileUpstream) and upstream.output_dim == 25
    with pytest.raises(ValueError, match="normalis"):
        build_upstream("egemaps", normalize=True)
