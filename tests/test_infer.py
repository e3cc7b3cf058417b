"""The command line's file collection (ser_modules/infer.py): files, folders and path lists
expanded into the audio files to classify.

The command line run on a trained model folder is tested in ``test_inference.py``.
"""

import pytest

from ser_modules.infer import collect_audio_files


def test_audio_inputs_expand_folders_and_path_lists(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.wav", "a/b/two.FLAC", "a/b/notes.txt", "three.ogg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text(
        "# my files\nthree.ogg\n\n/abs/four.mp3\n"
    )
    (tmp_path / "list.csv").write_text("speaker,path\ns1,a/one.wav\n")
    files = collect_audio_files(
        [tmp_path / "a", tmp_path / "list.txt", tmp_path / "list.csv"]
    )
    assert files == [
        str(tmp_path / "a" / "b" / "two.FLAC"),
        str(tmp_path / "a" / "one.wav"),
        str(tmp_path / "three.ogg"),
        "/abs/four.mp3",
        str(tmp_path / "a" / "one.wav"),
    ]
    (tmp_path / "empty_list.txt").write_text("# nothing yet\n")
    with pytest.raises(FileNotFoundError, match="No audio files"):
        collect_audio_files([tmp_path / "empty_list.txt"])


def test_path_lists_with_a_byte_order_mark_read_the_first_path(tmp_path):
    for name in ("list.txt", "list.csv"):
        listing = tmp_path / name
        listing.write_text(
            ("path\n" if name.endswith(".csv") else "") + "a.wav\nb.wav\n",
            encoding="utf-8-sig",
        )
        assert collect_audio_files([str(listing)]) == [
            str(tmp_path / "a.wav"),
            str(tmp_path / "b.wav"),
        ]
