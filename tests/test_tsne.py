"""Specification of the t-SNE of utterance representations (ser_modules/tsne.py, Vesper Fig. 6)."""

import numpy as np
import pytest
import soundfile

from ser_modules.audio import AudioError
from ser_modules.manifest import write_csv
from ser_modules.tsne import (
    main,
    parse_layer,
    pooled_representations,
    read_coordinates,
    run_tsne,
    tsne_coordinates,
    tsne_upstream,
)

SAMPLE_RATE = 16000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def manifest(tmp_path):
    """Six utterances of two classes (low vs high tones, 0.4 to 0.9 s) under $data_root."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for index in range(6):
        label, frequency = (
            ("sad", 150.0) if index % 2 == 0 else ("angry", 900.0)
        )
        seconds = 0.4 + 0.1 * index
        time = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        wave = 0.3 * np.sin(
            2 * np.pi * frequency * time
        ) + 0.01 * rng.standard_normal(time.size)
        soundfile.write(
            corpus / f"utt{index}.wav", wave.astype(np.float32), SAMPLE_RATE
        )
        rows.append(
            {
                "ID": f"utt{index}",
                "duration": seconds,
                "wav": f"$data_root/utt{index}.wav",
                "emo": label,
                "spk_id": "spk1",
            }
        )
    path = tmp_path / "test.csv"
    write_csv(path, rows)
    return str(path), str(corpus)


def _is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_SIGNATURE


def test_fbank_tsne_gives_coordinates_for_every_utterance_and_a_png(
    manifest, tmp_path
):
    csv_path, corpus = manifest
    out = tmp_path / "figures" / "tsne.png"
    result = run_tsne(csv_path, corpus, str(out), crop_seconds=6.5)
    assert (
        result["coordinates"].shape == (6, 2)
        and np.isfinite(result["coordinates"]).all()
    )
    assert _is_png(out)
    rows = read_coordinates(tmp_path / "figures" / "tsne.csv")
    assert [row["ID"] for row in rows] == [f"utt{index}" for index in range(6)]
    assert [row["label"] for row in rows] == ["sad", "angry"] * 3
    np.testing.assert_allclose(
        [[row["x"], row["y"]] for row in rows], result["coordinates"], atol=1e-5
    )


def test_hugging_face_upstream_layer_is_embedded(manifest, tmp_path):
    from ser_modules.upstreams.tiny import save_tiny_model

    csv_path, corpus = manifest
    source = save_tiny_model(
        tmp_path / "tiny_wavlm", kind="wavlm", num_layers=2, hidden_size=32
    )
    result = run_tsne(
        csv_path,
        corpus,
        str(tmp_path / "tsne.png"),
        ssl_source=source,
        layer="1",
    )
    assert result["coordinates"].shape == (6, 2)
    assert _is_png(tmp_path / "tsne.png")


def test_pooling_ignores_padding_so_batching_does_not_change_the_vectors(
    manifest,
):
    csv_path, corpus = manifest
    paths = [f"{corpus}/utt{index}.wav" for index in range(6)]
    upstream = tsne_upstream(None)
    alone = pooled_representations(upstream, paths, batch_size=1)
    batched = pooled_representations(upstream, paths, batch_size=6)
    assert alone.shape == (6, 80)
    np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_crop_keeps_the_first_seconds(manifest, tmp_path):
    csv_path, corpus = manifest
    long_path = f"{corpus}/utt5.wav"  # 0.9 s
    first_half = tmp_path / "first.wav"
    soundfile.write(
        first_half,
        soundfile.read(long_path, dtype="float32")[0][: SAMPLE_RATE // 2],
        SAMPLE_RATE,
    )
    upstream = tsne_upstream(None)
    cropped = pooled_representations(upstream, [long_path], crop_seconds=0.5)
    np.testing.assert_allclose(
        cropped, pooled_representations(upstream, [str(first_half)]), atol=1e-4
    )


def test_perplexity_is_clipped_for_a_few_points():
    # scikit-learn refuses perplexity >= number of points; 30 is the default.
    coordinates = tsne_coordinates(
        np.random.default_rng(0).standard_normal((4, 8)), perplexity=30.0
    )
    assert coordinates.shape == (4, 2)


def test_a_single_utterance_is_refused():
    with pytest.raises(ValueError, match="at least 2 utterances"):
        tsne_coordinates(np.ones((1, 8)))


@pytest.mark.parametrize(
    "text, expected", [("last", "last"), ("0", 0), ("12", 12), ("-1", -1)]
)
def test_layer_is_last_or_an_index(text, expected):
    assert parse_layer(text) == expected


def test_layer_that_is_not_an_index_is_refused():
    with pytest.raises(ValueError, match="--layer"):
        parse_layer("top")


def test_fbank_has_a_single_layer():
    with pytest.raises(ValueError, match="one layer"):
        tsne_upstream(None, layer=3)


def test_manifest_without_the_label_column_is_named(manifest, tmp_path):
    csv_path, corpus = manifest
    with pytest.raises(
        ValueError, match=r"test.csv lacks the columns \['speaker_emotion'\]"
    ):
        run_tsne(
            csv_path,
            corpus,
            str(tmp_path / "t.png"),
            label_column="speaker_emotion",
        )


def test_missing_audio_is_named(manifest, tmp_path):
    csv_path, corpus = manifest
    (tmp_path / "corpus" / "utt3.wav").unlink()
    with pytest.raises(AudioError, match="utt3.wav"):
        run_tsne(csv_path, corpus, str(tmp_path / "t.png"))


def test_command_line_reports_errors_without_traceback(
    manifest, tmp_path, capsys
):
    csv_path, _ = manifest
    elsewhere = str(tmp_path / "elsewhere")
    code = main(
        [
            "--csv",
            csv_path,
            "--data_root",
            elsewhere,
            "--fbank",
            "--out",
            str(tmp_path / "t.png"),
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("error: ")
        and "elsewhere" in error
        and "Traceback" not in error
    )
