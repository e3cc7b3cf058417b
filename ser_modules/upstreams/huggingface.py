"""Frozen WavLM / HuBERT / wav2vec 2.0 upstreams loaded from a local Hugging Face folder.

The folder holds ``config.json``, the weights (``*.safetensors`` or ``*.bin``) and
``preprocessor_config.json`` (its ``do_normalize`` says whether the model expects
layer-normed waveforms). Our Vesper exports are WavLM folders and load the same way.

Loading goes through SpeechBrain's lobes (``speechbrain.integrations.huggingface``), which
read a local folder with no network and freeze the model. Their ``forward`` is not used,
because for padded batches it is wrong in three ways (SpeechBrain 1.1.2):

* it layer-norms the waveform over the padded length, so padding shifts the statistics;
* it always passes an attention mask, which cannot protect models whose CNN uses group
  norm (``feat_extract_norm == "group"``: WavLM/HuBERT/wav2vec 2.0 Base), because group
  norm normalises each channel over all time steps, padding included;
* it builds the mask with the length of the longest utterance, not of the tensor.

So :class:`HuggingFaceUpstream` normalises each utterance over its valid samples, runs
layer-norm-CNN models batched with the attention mask, and runs group-norm-CNN models on
groups of equal-length utterances with no padding at all. Either way an utterance gives
the same valid frames alone or inside any padded batch.

Hidden states follow ``transformers`` (>= 5): index 0 is the input of the first
transformer layer (CNN features, projection and positional convolution), index k the raw
output of layer k. For pre-LN models (``do_stable_layer_norm``, the Large ones) the last
index is the raw output of the last layer, *without* the encoder's final LayerNorm.

With ``fast_path=True`` (the default) the hidden states come from
:class:`~ser_modules.upstreams.fast_wavlm.FastSSLForward`, an inference-only forward of the
same weights laid out for the CPU (channels-last CNN as GEMMs, fused Q/K/V, fused
``scaled_dot_product_attention`` with WavLM's gated relative-position bias as the mask,
native bf16 under bf16 autocast). It equals the Hugging Face forward to 1e-4 relative in
fp32 (tested); ``fast_path=False`` runs the Hugging Face model itself, the reference.
The feature cache, inference and t-SNE all call this upstream, so they all get the fast path.
"""

import importlib
import json
import logging
import math
import os

import torch
import torch.nn.functional as F

from ser_modules.fingerprint import file_sha256
from ser_modules.upstreams.base import (
    FEATURE_VERSION,
    Upstream,
    padding_mask,
    relative_to_absolute,
    resolve_layers,
)
from ser_modules.upstreams.fast_wavlm import FastSSLForward, unsupported_reason

logger = logging.getLogger(__name__)

# SpeechBrain's lobe of each kind: (module, class). Imported when a model is built, so a
# process that runs no Hugging Face model never imports transformers (seconds of imports).
LOBES = {
    "wavlm": ("speechbrain.integrations.huggingface.wavlm", "WavLM"),
    "hubert": ("speechbrain.integrations.huggingface.hubert", "HuBERT"),
    "wav2vec2": ("speechbrain.integrations.huggingface.wav2vec2", "Wav2Vec2"),
}


def lobe_class(kind):
    """SpeechBrain's Hugging Face lobe class of ``kind`` (a key of :data:`LOBES`)."""
    module, name = LOBES[kind]
    return getattr(importlib.import_module(module), name)


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def normalize_waveforms(wavs, lengths, eps=1e-5):
    """Layer-norm each waveform over its valid samples; padding becomes zeros.

    Equal to ``F.layer_norm`` of each unpadded utterance alone (eps 1e-5, the
    normalisation WavLM and wav2vec 2.0 Large were pretrained with in fairseq).

    Arguments
    ---------
    wavs : torch.Tensor
        ``(B, T)`` right-padded waveforms.
    lengths : torch.Tensor
        ``(B,)`` absolute lengths in samples.
    eps : float
        Added to the variance, as in ``torch.nn.functional.layer_norm``.

    Returns
    -------
    torch.Tensor
        ``(B, T)`` normalised waveforms.
    """
    normalized = torch.zeros_like(wavs)
    for index, length in enumerate(lengths.tolist()):
        normalized[index, :length] = F.layer_norm(
            wavs[index, :length], (length,), eps=eps
        )
    return normalized


def read_model_type(source):
    """``model_type`` of a local Hugging Face model folder (from its ``config.json``)."""
    config_path = os.path.join(source, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{config_path} not found: the upstream source must be a local Hugging Face model "
            "folder with config.json, the weights and preprocessor_config.json (nothing is "
            "downloaded at run time)."
        )
    with open(config_path, encoding="utf-8") as handle:
        return json.load(handle).get("model_type")


class HuggingFaceUpstream(Upstream):
    """A frozen WavLM, HuBERT or wav2vec 2.0 model returning selected hidden states.

    Arguments
    ---------
    source : str
        Local folder with ``config.json``, weights and ``preprocessor_config.json``.
    kind : str
        ``"auto"`` (the ``model_type`` of ``config.json``), ``"wavlm"``, ``"hubert"``
        or ``"wav2vec2"``; a kind that contradicts ``config.json`` is an error.
    layers : str or list of int
        ``"all"``, ``"last"`` or hidden-state indices (0 = CNN/projection output,
        k = output of layer k). Layers above the highest selected one are dropped from
        the model, so selecting low layers also saves their compute.
    normalize : bool, optional
        Layer-norm each waveform over its valid samples; ``None`` reads ``do_normalize``
        from ``preprocessor_config.json``.
    sample_rate : int
        Rate of the input waveforms; must match the model's feature extractor.
    fast_path : bool
        Compute the hidden states with :class:`FastSSLForward` (equal to the Hugging Face
        forward within float rounding, about 2x faster on CPU); ``False`` runs the Hugging
        Face model (the reference). A model the fast path does not support (e.g. a
        batch-norm positional convolution) falls back to the Hugging Face forward, logged.

    Example
    -------
    >>> upstream = HuggingFaceUpstream("pretrained/wavlm-large", layers="all")  # doctest: +SKIP
    >>> feats, feat_lens = upstream(wavs, wav_lens)  # (B, 25, T', 1024)  # doctest: +SKIP
    """

    def __init__(
        self,
        source,
        kind="auto",
        layers="all",
        normalize=None,
        sample_rate=16000,
        fast_path=True,
    ):
        super().__init__()
        self.source = os.path.abspath(str(source))
        model_type = read_model_type(self.source)
        if kind == "auto":
            kind = model_type
        if kind not in LOBES:
            raise ValueError(
                f"Unsupported upstream kind {kind!r} for {self.source}: use one of {sorted(LOBES)} "
                "(or 'auto' with a config.json whose model_type is one of them)."
            )
        if model_type != kind:
            raise ValueError(
                f"{self.source}/config.json has model_type {model_type!r} but kind={kind!r} "
                "was asked: fix the kind or point source to the right model."
            )
        self.kind = kind
        # save_path only serves hub downloads; a local source is read in place.
        lobe = lobe_class(kind)(
            source=self.source,
            save_path=self.source,
            freeze=True,
            output_all_hiddens=True,
            output_norm=False,
        )
        self.model = lobe.model
        config = self.model.config
        extractor_rate = lobe.feature_extractor.sampling_rate
        if extractor_rate != sample_rate:
            raise ValueError(
                f"{self.source} expects {extractor_rate} Hz audio but sample_rate={sample_rate}: "
                "resample the audio to the model's rate."
            )
        self.sample_rate = sample_rate
        self.normalize = bool(
            lobe.normalize_wav if normalize is None else normalize
        )
        # Group norm in the CNN sees padding; layer norm is per frame, so only the
        # attention mask is needed to keep padding out.
        self.batch_with_mask = config.feat_extract_norm == "layer"

        self.layers = resolve_layers(layers, config.num_hidden_layers + 1)
        # hidden_states[k] is the raw output of layer k, so layers above the highest
        # selected one never influence the result and are not run.
        num_kept_layers = max(max(self.layers), 1)
        del self.model.encoder.layers[num_kept_layers:]
        config.num_hidden_layers = num_kept_layers

        self.num_layers = len(self.layers)
        self.output_dim = config.hidden_size
        self.hop_length = math.prod(config.conv_stride)
        # The samples one frame sees: the first frame exists once T >= this.
        self.receptive_field = 1
        for kernel, stride in reversed(
            list(zip(config.conv_kernel, config.conv_stride))
        ):
            self.receptive_field = (self.receptive_field - 1) * stride + kernel
        self.fast = None
        if fast_path:
            reason = unsupported_reason(self.model)
            if reason is None:
                self.fast = FastSSLForward(self.model)
            else:
                logger.info(
                    "%s: %s, so the Hugging Face forward is used (no fast path).",
                    self.source,
                    reason,
                )
        self.freeze()

    def num_frames(self, num_samples):
        """Frames the CNN produces for ``num_samples`` (int or ``(B,)`` int64 tensor)."""
        return self.model._get_feat_extract_output_lengths(num_samples)

    def identity(self):
        """Model files by sha256, model type, layers, normalisation, sample rate, fast path."""
        weight_files = sorted(
            name
            for name in os.listdir(self.source)
            if name.endswith(WEIGHT_SUFFIXES)
        )
        preprocessor = os.path.join(self.source, "preprocessor_config.json")
        return {
            "kind": self.kind,
            "source": self.source,
            "config_sha256": file_sha256(
                os.path.join(self.source, "config.json")
            ),
            "preprocessor_sha256": file_sha256(preprocessor),
            "weights_sha256": {
                name: file_sha256(os.path.join(self.source, name))
                for name in weight_files
            },
            "layers": self.layers,
            "normalize": self.normalize,
            "sample_rate": self.sample_rate,
            "feature_version": FEATURE_VERSION,
            # The fast path equals the Hugging Face forward only to float rounding (and runs
            # native bf16 under autocast): features of the two are never mixed in a cache.
            "fast_path": self.fast is not None,
        }

    def _hidden_states(self, wavs, attention_mask=None, frame_lengths=None):
        """Selected hidden states ``(B, nL, T', D)`` of one call of the model.

        The fast path runs in the autocast dtype when autocast is on for the input's device
        (bf16 on CPU: native bf16 matmuls; the result is float32), else in float32.
        """
        if self.fast is None:
            output = self.model(
                wavs, attention_mask=attention_mask, output_hidden_states=True
            )
            return torch.stack(
                [output.hidden_states[index] for index in self.layers], dim=1
            )
        device_type = wavs.device.type
        dtype = torch.float32
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            states = self.fast(
                wavs, frame_lengths, keep=self.layers, dtype=dtype
            )
        return torch.stack(states, dim=1)

    def forward(self, wavs, wav_lens=None):
        """Selected hidden states of a padded batch; see :meth:`Upstream.forward`.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` float32 waveforms at ``sample_rate``.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths.

        Returns
        -------
        feats : torch.Tensor
            ``(B, nL, T', D)`` with zeros past each utterance's frames.
        feat_lens : torch.Tensor
            ``(B,)`` relative frame lengths from the CNN output-length formula.
        """
        batch_size, max_samples = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch_size, device=wavs.device)
        lengths = relative_to_absolute(wav_lens, max_samples)  # (B,)
        too_short = (
            (lengths < self.receptive_field).nonzero().flatten().tolist()
        )
        if too_short:
            raise ValueError(
                f"Batch items {too_short} have {lengths[too_short].tolist()} samples, fewer than "
                f"the {self.receptive_field} the model needs for one frame: remove such "
                "utterances from the manifest."
            )
        frame_lengths = self.num_frames(lengths)  # (B,)
        max_frames = int(self.num_frames(max_samples))
        if self.normalize:
            wavs = normalize_waveforms(wavs, lengths)

        with torch.no_grad():
            if self.batch_with_mask:
                mask = padding_mask(lengths, max_samples).long()  # (B, T)
                feats = self._hidden_states(
                    wavs, mask, frame_lengths
                )  # (B, nL, T', D)
                frame_mask = padding_mask(frame_lengths, max_frames)  # (B, T')
                feats = feats * frame_mask[:, None, :, None].to(feats.dtype)
            else:
                feats = None
                for length in lengths.unique().tolist():
                    members = (lengths == length).nonzero().flatten()
                    group = self._hidden_states(
                        wavs[members, :length]
                    )  # (G, nL, t', D)
                    if feats is None:
                        feats = group.new_zeros(
                            batch_size,
                            self.num_layers,
                            max_frames,
                            self.output_dim,
                        )
                    feats[members, :, : group.shape[2]] = group
        return feats, frame_lengths.to(wav_lens.dtype) / max_frames
