"""SpeechBrain CSV manifests: atomic writing, ``$data_root`` paths, and skip-when-done.

Every preparation script in ``recipes/`` writes its CSV files through this module so that

* a crash never leaves a half-written CSV (files are written to a temporary name and
  renamed with :func:`os.replace`, which is atomic on POSIX file systems);
* paths are stored relative to the corpus as ``$data_root/...``, so a moved corpus only
  needs a new ``--data_folder``;
* a preparation that already ran with the same options is skipped, and one whose options
  changed is redone (the options are stored in ``<save_folder>/prepare_options.json``,
  written last, after every output exists).
"""

import collections
import csv
import json
import logging
import os
import re
import tempfile

logger = logging.getLogger(__name__)

DATA_ROOT = "$data_root"
OPTIONS_FILE = "prepare_options.json"
# SpeechBrain's CSV variables: "$data_root/x.wav" with replacements={"data_root": ...}.
VARIABLE = re.compile(r"\$([\w.]+)")


def to_data_root_path(path, data_folder):
    """Return ``path`` written relative to ``data_folder`` as ``$data_root/<relative>``.

    Arguments
    ---------
    path : str
        A file inside ``data_folder``.
    data_folder : str
        The corpus root given to the preparation.

    Returns
    -------
    str
        ``"$data_root/<relative path with forward slashes>"``.
    """
    relative = os.path.relpath(
        os.path.abspath(path), os.path.abspath(data_folder)
    )
    if relative == ".." or relative.startswith(".." + os.sep):
        raise ValueError(
            f"{path} is not inside the data folder {data_folder}: manifests store paths "
            "relative to --data_folder, so every file must live below it."
        )
    return DATA_ROOT + "/" + relative.replace(os.sep, "/")


def resolve_data_root(path, data_folder):
    """Inverse of :func:`to_data_root_path`: replace ``$data_root`` by ``data_folder``."""
    return path.replace(DATA_ROOT, str(data_folder))


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


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically (temporary file in the same folder + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(
        dir=folder, prefix=".tmp_", suffix=os.path.basename(path)
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def write_csv(path, rows, fieldnames=None):
    """Write ``rows`` (a sequence of dicts) as a SpeechBrain CSV, atomically.

    Arguments
    ---------
    path : str
        Destination CSV.
    rows : list of dict
        One dict per utterance; each must hold every field of ``fieldnames``.
    fieldnames : list of str, optional
        Column order. Defaults to the keys of the first row. ``ID`` must be first.
    """
    rows = list(rows)
    if fieldnames is None:
        if not rows:
            raise ValueError(
                f"Cannot infer the columns of the empty manifest {path}."
            )
        fieldnames = list(rows[0].keys())
    if fieldnames[0] != "ID":
        raise ValueError(
            f"The first column of a SpeechBrain manifest must be ID, got {fieldnames}"
        )
    for row in rows:
        missing = [name for name in fieldnames if name not in row]
        if missing:
            raise ValueError(
                f"Row {row.get('ID', '?')} of {path} lacks the fields {missing}."
            )
    ids = [row["ID"] for row in rows]
    duplicated = [
        key for key, count in collections.Counter(ids).items() if count > 1
    ]
    if duplicated:
        raise ValueError(f"Duplicated IDs in {path}: {duplicated[:5]}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(
        dir=folder, prefix=".tmp_", suffix=os.path.basename(path)
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=fieldnames, extrasaction="ignore"
            )
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    logger.info("Wrote %d rows to %s", len(rows), path)


def read_csv(path):
    """Read a manifest as a list of dicts (all values are strings)."""
    check_utf8(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def check_utf8(path):
    """Raise a ``ValueError`` naming ``path`` (and the offending line) if it is not UTF-8 text.

    A latin-1 or Windows-1252 CSV otherwise fails deep inside the CSV reader with a
    ``UnicodeDecodeError`` that names no file.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path} is not UTF-8 text (line {line}, byte {data[error.start]:#04x}): save it as UTF-8, e.g. "
            f"iconv -f latin1 -t utf-8 {path} > fixed.csv"
        ) from error


def _normalise_options(options):
    # JSON round trip so that tuples/lists and ints/floats compare as they will be stored.
    return json.loads(json.dumps(options, sort_keys=True, default=str))


def skip_preparation(save_folder, options, outputs):
    """Whether a preparation with these ``options`` already produced all ``outputs``.

    Arguments
    ---------
    save_folder : str
        Where the preparation writes its manifests.
    options : dict
        Everything that changes the result (data folder, split, seed, ...).
    outputs : list of str
        Files the preparation must have written.

    Returns
    -------
    bool
        True when the stored options equal ``options`` and every output exists.
    """
    record = os.path.join(save_folder, OPTIONS_FILE)
    if not os.path.isfile(record):
        return False
    with open(record, encoding="utf-8") as handle:
        try:
            stored = json.load(handle)
        except json.JSONDecodeError:
            return False
    if stored.get("options") != _normalise_options(options):
        logger.info(
            "Preparation options changed since the last run in %s: redoing it.",
            save_folder,
        )
        return False
    missing = [path for path in outputs if not os.path.isfile(path)]
    if missing:
        logger.info(
            "Outputs missing in %s (%s): redoing the preparation.",
            save_folder,
            missing[:3],
        )
        return False
    return True


def mark_preparation_done(save_folder, options, outputs):
    """Record that ``outputs`` were written with ``options`` (call it last)."""
    record = {
        "options": _normalise_options(options),
        "outputs": [os.path.relpath(path, save_folder) for path in outputs],
    }
    atomic_write_text(
        os.path.join(save_folder, OPTIONS_FILE),
        json.dumps(record, indent=2) + "\n",
    )


def invalidate_preparation(save_folder):
    """Forget a previous preparation (called at the start of a run that redoes it)."""
    record = os.path.join(save_folder, OPTIONS_FILE)
    if os.path.isfile(record):
        os.remove(record)


def summarize_manifest(path, label_key="emo", speaker_key="spk_id"):
    """Counts of a manifest: utterances, hours, per-label counts, speakers.

    Returns
    -------
    dict
        ``{"utterances": int, "hours": float, "labels": {label: count}, "speakers": int}``
        (``labels`` and ``speakers`` only when the columns exist).
    """
    rows = read_csv(path)
    summary = {
        "utterances": len(rows),
        "hours": sum(float(row["duration"]) for row in rows) / 3600.0,
    }
    if rows and label_key in rows[0]:
        summary["labels"] = dict(
            sorted(collections.Counter(row[label_key] for row in rows).items())
        )
    if rows and speaker_key in rows[0]:
        summary["speakers"] = len({row[speaker_key] for row in rows})
    return summary


def format_summary(manifests):
    """A Markdown table of :func:`summarize_manifest` for ``{name: csv_path}``."""
    lines = [
        "| manifest | utterances | hours | speakers | labels |",
        "|---|---|---|---|---|",
    ]
    for name, path in manifests.items():
        summary = summarize_manifest(path)
        labels = ", ".join(
            f"{k}: {v}" for k, v in summary.get("labels", {}).items()
        )
        lines.append(
            f"| {name} | {summary['utterances']} | {summary['hours']:.3f} | "
            f"{summary.get('speakers', '-')} | {labels or '-'} |"
        )
    return "\n".join(lines)


def parse_value(text, default, name=None):
    """Convert a command-line string to the type of the parameter's default.

    Shared by the preparation scripts' command line (:func:`preparation_cli`) and the
    recipes' preparation options (``ser_modules.recipe``).

    Arguments
    ---------
    text : str
        The value as typed, e.g. ``"0.2"``, ``"True"`` or ``"none"``.
    default : object
        The parameter's default: a bool, int or float default converts ``text`` to that
        type; a ``None`` default turns ``"none"`` into ``None`` and a number into an int or
        float; anything else keeps the text.
    name : str, optional
        The option's name, used in the error message.

    Returns
    -------
    bool, int, float, str or None

    Raises
    ------
    ValueError
        Naming the option (``--name=value``) and the expected type.
    """
    option = f"--{name}={text!r}" if name else repr(text)
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{option}: expected True or False")
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError as error:
        expected = "an integer" if isinstance(default, int) else "a number"
        raise ValueError(
            f"{option} is not {expected} (default {default!r})"
        ) from error
    if default is None:
        # An optional option (e.g. ``valid_fraction``, whose default depends on another
        # option): "none" keeps the default, a number is a number.
        if text.lower() == "none":
            return None
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                pass
    return text


def preparation_cli(prepare_function, argv=None):
    """Expose a preparation function as a script: ``--name=value`` for each of its parameters.

    Parameters without a default are required. Values are converted to the type of the
    default (bool accepts True/False). After the preparation, the manifests it returned
    are summarised as a Markdown table.

    Arguments
    ---------
    prepare_function : callable
        A ``prepare_<dataset>(data_folder, save_folder, ...)`` function returning
        ``{split_name: {"train": csv, "valid": csv, "test": csv}}`` (or ``{"train": csv, ...}``).
    argv : list of str, optional
        Arguments (defaults to ``sys.argv[1:]``).
    """
    import argparse
    import inspect
    import sys

    signature = inspect.signature(prepare_function)
    parser = argparse.ArgumentParser(
        description=(prepare_function.__doc__ or "").strip().split("\n")[0]
    )
    for name, parameter in signature.parameters.items():
        if parameter.default is inspect.Parameter.empty:
            parser.add_argument(f"--{name}", required=True)
        else:
            parser.add_argument(
                f"--{name}",
                default=None,
                help=f"default: {parameter.default!r}",
            )
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    kwargs = {}
    for name, parameter in signature.parameters.items():
        value = args[name]
        if value is None:
            continue
        default = parameter.default
        kwargs[name] = (
            value
            if default is inspect.Parameter.empty
            else parse_value(value, default, name)
        )
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    result = prepare_function(**kwargs)
    manifests = {}
    for split, value in (result or {}).items():
        if isinstance(value, dict):
            manifests.update(
                {f"{split}/{name}": path for name, path in value.items()}
            )
        else:
            manifests[split] = value
    if manifests:
        print(format_summary(manifests))
    return result
