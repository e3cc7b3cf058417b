"""Classify audio with a trained emotion model folder, of any length, sample rate and
channel count.

A model folder (layout and load-time checks: :mod:`ser_modules.model_folder`) is written by
every training run, or from any checkpoint by
:func:`ser_modules.model_export.export_model_folder`. Loading::

    from ser_modules.inference import EmotionClassifier
    classifier = EmotionClassifier.from_hparams(source=MODEL_DIR, savedir=MODEL_DIR)
    result = classifier.classify_file("speech.wav")   # result["label"], result["windows"]

    # or, with nothing but SpeechBrain imported (ser_modules must be installed):
    from speechbrain.inference.interfaces import foreign_class
    classifier = foreign_class(source=MODEL_DIR, pymodule_file="custom_interface.py",
                               classname="EmotionClassifier")

A recording longer than the training crop is cut into windows of that length (the hop is
configurable); each window is classified and the file's prediction is the mean of the
window probabilities. ``python -m ser_modules.infer`` is the command-line front end.
"""

import logging
import os

import torch
from speechbrain.inference.interfaces import Pretrained

from ser_modules.audio import (
    AudioError,
    crop_or_pad,
    load_audio,
    seconds_to_samples,
)
from ser_modules.model_folder import (
    CHECKPOINT_EXTENSION,
    HYPERPARAMS_FILE,
    LABEL_ENCODER_FILE,
    ModelFolderError,
    check_model_folder,
    load_plain_checkpoint,
)
from ser_modules.upstreams.base import minimum_samples

logger = logging.getLogger(__name__)


class NonFiniteOutputError(ValueError):
    """The model gave NaN or infinite outputs for a file: reported as a failed file."""


def window_bounds(num_samples, window, hop):
    """Sample ranges of the windows a recording of ``num_samples`` is classified in.

    Windows of ``window`` samples start every ``hop`` samples; when they do not reach the
    end, one more window ends exactly at the end, so every sample is covered by a full
    window. A recording no longer than a window (or ``window=None``) is one window.

    Returns
    -------
    list of (int, int)
        ``(start, end)`` of each window.
    """
    if window is None or num_samples <= window:
        return [(0, num_samples)]
    if hop is None or hop <= 0:
        raise ValueError(f"The hop must be positive, got {hop} samples.")
    starts = list(range(0, num_samples - window + 1, hop))
    if starts[-1] + window < num_samples:
        starts.append(num_samples - window)
    return [(start, start + window) for start in starts]


class EmotionClassifier(Pretrained):
    """A trained emotion model: frozen upstream -> layer combiner -> [input norm] -> downstream.

    Build it from a model folder with :meth:`from_hparams` (see the module docstring).

    Example
    -------
    >>> classifier = EmotionClassifier.from_hparams(source="model", savedir="model")  # doctest: +SKIP
    >>> classifier.classify_file("speech.wav")["label"]  # doctest: +SKIP
    'angry'
    """

    HPARAMS_NEEDED = [
        "sample_rate",
        "window_seconds",
        "hop_seconds",
        "label_encoder",
        "pretrainer",
    ]
    MODULES_NEEDED = ["layer_combiner", "downstream"]

    def __init__(
        self, modules=None, hparams=None, run_opts=None, freeze_params=True
    ):
        modules, hparams = dict(modules or {}), dict(hparams or {})
        folder = self.model_folder_of(hparams)
        if (
            "upstream" not in modules
        ):  # copied upstream: a partial waiting for its folder
            upstream = hparams["upstream"](
                source=os.path.join(folder, hparams["upstream_folder"])
            )
            hparams["upstream"] = modules["upstream"] = upstream
        encoder_path = os.path.join(
            folder, hparams.get("label_encoder_file", LABEL_ENCODER_FILE)
        )
        if not os.path.isfile(encoder_path):
            raise ModelFolderError(
                f"The model folder {folder} lacks {os.path.basename(encoder_path)}: re-export it."
            )
        hparams["label_encoder"].load(encoder_path)
        self._load_strictly(folder, hparams["pretrainer"].loadables)
        super().__init__(
            modules=modules,
            hparams=hparams,
            run_opts=run_opts,
            freeze_params=freeze_params,
        )
        self.model_folder = folder
        self.labels = [
            self.hparams.label_encoder.ind2lab[index]
            for index in range(len(self.hparams.label_encoder))
        ]
        self.min_samples = minimum_samples(self.mods.upstream)

    @staticmethod
    def _load_strictly(folder, loadables):
        """Load every parameter file again, strictly (SpeechBrain's transfer only warns).

        Raises
        ------
        ModelFolderError
            Naming the file and the missing, unexpected or mis-shaped parameters.
        """
        for name, module in loadables.items():
            path = os.path.join(folder, name + CHECKPOINT_EXTENSION)
            state = load_plain_checkpoint(path)
            try:
                if hasattr(
                    module, "_load_statistics_dict"
                ):  # global normalisation statistics
                    missing = {"count", "glob_mean", "glob_std"} - set(state)
                    if missing:
                        raise RuntimeError(
                            f"missing statistics {sorted(missing)}"
                        )
                    module._load_statistics_dict(state)
                else:
                    module.load_state_dict(state, strict=True)
            except (RuntimeError, TypeError, AttributeError) as error:
                raise ModelFolderError(
                    f"{path} does not fit the {name} described in the model folder's YAML ({error}). "
                    "The parameter file belongs to another model: re-export the model folder."
                ) from error

    @staticmethod
    def model_folder_of(hparams):
        """The folder the parameter files were fetched from (through savedir symlinks)."""
        paths = hparams["pretrainer"].paths
        return os.path.dirname(os.path.realpath(str(paths["downstream"])))

    @classmethod
    def from_hparams(cls, source, hparams_file=HYPERPARAMS_FILE, **kwargs):
        """Load a local model folder; missing files are reported before anything is built.

        Arguments
        ---------
        source : str
            The model folder (nothing is downloaded).
        hparams_file : str
            Its inference YAML.
        **kwargs
            Passed to ``Pretrained.from_hparams`` (``savedir``, ``run_opts={"device": ...}``,
            ``overrides`` ...).
        """
        description = check_model_folder(source, hparams_file)
        classifier = super().from_hparams(
            source=str(source), hparams_file=hparams_file, **kwargs
        )
        declared = (description.get("downstream") or {}).get("num_classes")
        if declared is not None and int(declared) != len(classifier.labels):
            raise ModelFolderError(
                f"The model in {source} has {declared} outputs but its label encoder lists "
                f"{len(classifier.labels)} labels ({classifier.labels}): the files do not belong together; "
                "re-export the model folder."
            )
        return classifier

    def forward(self, wavs, wav_lens=None):
        """Logits ``(B, C)`` of a padded batch of waveforms ``(B, T)`` at ``sample_rate``."""
        feats, feat_lens = self.mods.upstream(wavs, wav_lens)  # (B, nL, T', D)
        frames = self.mods.layer_combiner(feats.float())  # (B, T', D)
        if "input_norm" in self.mods:
            frames = self.mods.input_norm(
                frames, feat_lens
            )  # frozen statistics (eval mode)
        return self.mods.downstream(frames, feat_lens)  # (B, C)

    def classify_batch(self, wavs, wav_lens=None):
        """Classify a padded batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` mono waveforms at ``sample_rate``, right-padded.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths (1.0 = ``T``); ``None``: no padding.

        Returns
        -------
        probabilities : torch.Tensor
            ``(B, C)`` class probabilities (on the CPU).
        indices : torch.Tensor
            ``(B,)`` most probable class indices.
        labels : list of str
            Their class names.
        """
        wavs = wavs.to(self.device, torch.float32)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        wav_lens = wav_lens.to(self.device)
        with torch.no_grad(), self.inference_ctx:
            logits = self.forward(wavs, wav_lens)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteOutputError(
                "the model gave NaN or infinite outputs (out-of-range audio, or a broken model folder)"
            )
        probabilities = torch.softmax(logits.float(), dim=-1).cpu()  # (B, C)
        indices = probabilities.argmax(dim=-1)
        return (
            probabilities,
            indices,
            [self.labels[index] for index in indices.tolist()],
        )

    def classify_waveform(
        self, waveform, window_seconds=None, hop_seconds=None, batch_size=8
    ):
        """Classify one recording window by window.

        Arguments
        ---------
        waveform : torch.Tensor
            ``(T,)`` mono waveform at ``sample_rate``.
        window_seconds : float, optional
            Window length (default: the training crop, ``window_seconds`` of the YAML;
            ``<= 0``: the whole recording at once).
        hop_seconds : float, optional
            Step between window starts (default: ``hop_seconds`` of the YAML, or the window
            length when ``window_seconds`` is given).
        batch_size : int
            Windows per forward pass.

        Returns
        -------
        dict
            ``label``, ``index``, ``probabilities`` ``{label: p}`` (mean over windows) and
            ``windows``: per window ``start_seconds``, ``end_seconds``, ``label``, ``index``,
            ``probabilities``.
        """
        rate = int(self.hparams.sample_rate)
        if window_seconds is None:
            window_seconds = self.hparams.window_seconds
            hop_seconds = (
                self.hparams.hop_seconds if hop_seconds is None else hop_seconds
            )
        hop_seconds = (
            hop_seconds or window_seconds
        )  # a window given alone: back to back
        window = seconds_to_samples(window_seconds, rate)
        hop = seconds_to_samples(hop_seconds, rate)
        bounds = window_bounds(int(waveform.shape[0]), window, hop)
        probabilities = []
        for first in range(0, len(bounds), batch_size):
            segments = [
                crop_or_pad(
                    waveform[start:end], None, min_samples=self.min_samples
                )
                for start, end in bounds[first : first + batch_size]
            ]
            lengths = torch.tensor(
                [segment.shape[0] for segment in segments], dtype=torch.float32
            )
            wavs = torch.nn.utils.rnn.pad_sequence(
                segments, batch_first=True
            )  # (B, T)
            probabilities.append(
                self.classify_batch(wavs, lengths / lengths.max())[0]
            )
        probabilities = torch.cat(probabilities)  # (num_windows, C)
        overall = probabilities.mean(dim=0)  # (C,)
        windows = [
            {
                "start_seconds": start / rate,
                "end_seconds": end / rate,
                **self._prediction(window_probabilities),
            }
            for (start, end), window_probabilities in zip(bounds, probabilities)
        ]
        return {**self._prediction(overall), "windows": windows}

    def classify_file(
        self, path, window_seconds=None, hop_seconds=None, batch_size=8
    ):
        """Classify an audio file of any rate and channel count (see :meth:`classify_waveform`).

        Raises
        ------
        ser_modules.audio.AudioError
            Unreadable, empty, non-finite or out-of-range audio (the message names the file).
        NonFiniteOutputError
            The model gave NaN or infinite outputs for it (never turned into a label).
        """
        waveform = load_audio(
            path, int(self.hparams.sample_rate)
        )  # (T,), mono, resampled
        try:
            result = self.classify_waveform(
                waveform, window_seconds, hop_seconds, batch_size
            )
        except NonFiniteOutputError as error:
            raise NonFiniteOutputError(
                f"Cannot classify {path}: {error}."
            ) from error
        return {
            "file": str(path),
            "duration_seconds": waveform.shape[0]
            / int(self.hparams.sample_rate),
            **result,
        }

    def _prediction(self, probabilities):
        """``label``, ``index`` and ``{label: probability}`` of a ``(C,)`` distribution."""
        index = int(probabilities.argmax())
        return {
            "label": self.labels[index],
            "index": index,
            "probabilities": {
                label: float(p)
                for label, p in zip(self.labels, probabilities.tolist())
            },
        }


def classify_files(
    classifier, paths, window_seconds=None, hop_seconds=None, batch_size=8
):
    """Classify many files; an unusable file is reported and skipped, not fatal.

    Returns
    -------
    results : list of dict
        :meth:`EmotionClassifier.classify_file` of each readable file.
    failures : list of dict
        ``{"file", "error"}`` of each file that could not be read or gave non-finite outputs.
    """
    results, failures = [], []
    for path in paths:
        try:
            results.append(
                classifier.classify_file(
                    path, window_seconds, hop_seconds, batch_size
                )
            )
        except (AudioError, NonFiniteOutputError) as error:
            logger.warning("Skipped: %s", error)
            failures.append({"file": str(path), "error": str(error)})
    return results, failures
