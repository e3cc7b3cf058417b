"""The Vesper encoder: WavLM Large's architecture with N Transformer layers.

One class plays both roles of Vesper pretraining:

* the frozen **teacher** (WavLM Large, M = 24 layers) that returns the raw outputs of
  the requested layers, and
* the **student** (Vesper-N) that reads the same CNN features, replaces frames by the
  learned mask embedding at two points (phoneme-level mask at the input of layer 1,
  word-level mask on the output of layer N/2) and returns layers N/2 and N.

The maths is Hugging Face's: the modules are ``transformers``' WavLM feature encoder,
feature projection, positional convolution and pre-LN ("stable layer norm") encoder
layers, with the same parameter names as ``transformers.WavLMModel``. What differs from
``WavLMModel`` is only what Vesper needs:

* no final encoder LayerNorm: every layer output is returned raw (the Vesper teacher
  targets are raw layer outputs and the student is trained without it);
* the CNN is split off (:meth:`VesperEncoder.extract_cnn_features`) so that teacher and
  student, whose CNNs are the same frozen copy, run it once per batch;
* masks are applied after the positional convolution (as the authors' code does), not
  before it as in ``WavLMModel._mask_hidden_states``;
* the input waveform is layer-normed per utterance over its real samples only
  (``ser_modules.upstreams.huggingface.normalize_waveforms``, shared with the upstreams);
* LayerDrop is never applied, so layer indices used by the losses always exist.

Layer indices are 1-based throughout: layer 0 is the input of the first Transformer
layer (after the positional convolution), layer k the output of the k-th layer.
"""

import copy
import json
import os

import torch
import torch.nn as nn
from transformers import WavLMConfig, WavLMModel
from transformers.models.wavlm.modeling_wavlm import (
    WavLMAttention,
    WavLMEncoderLayerStableLayerNorm,
    WavLMFeatureEncoder,
    WavLMFeatureProjection,
    WavLMPositionalConvEmbedding,
    WavLMPreTrainedModel,
)

from ser_modules.upstreams.base import padding_mask, relative_to_absolute
from ser_modules.upstreams.huggingface import normalize_waveforms

# WavLM's final encoder LayerNorm: present in transformers.WavLMModel, absent here.
FINAL_LAYER_NORM_PREFIX = "encoder.layer_norm."


def wavlm_large_config(num_hidden_layers=24):
    """The WavLM Large architecture (microsoft/wavlm-large) with ``num_hidden_layers`` layers.

    Vesper-4 and Vesper-12 are this architecture with 4 and 12 layers.

    Arguments
    ---------
    num_hidden_layers : int

    Returns
    -------
    transformers.WavLMConfig
    """
    return WavLMConfig(
        hidden_size=1024,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=False,
        num_buckets=320,
        max_bucket_distance=800,
        mask_time_prob=0.075,
    )


def wavlm_base_config():
    """The WavLM Base architecture (microsoft/wavlm-base): 12 post-LN layers of 768 dims.

    Returns
    -------
    transformers.WavLMConfig
    """
    return WavLMConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        conv_bias=False,
        num_buckets=320,
        max_bucket_distance=800,
    )


class ContiguousWavLMAttention(WavLMAttention):
    """``transformers``' WavLM attention, fed a time-major contiguous copy of its input.

    The parent transposes (B, T, D) to (T, B, D) and projects that strided view. When no
    input requires gradients (the teacher under ``torch.inference_mode``), torch's matmul
    does not fold such a view into one matrix product but expands the weight over time
    and copies it; in bf16 on CPU that makes each projection about 200x slower (a
    24-layer teacher step: 30 s instead of 1.3 s). Laying the input out time-major first
    (one small copy) makes the parent's transpose contiguous. Same maths, same weights.
    """

    def torch_multi_head_self_attention(
        self, hidden_states, attention_mask, gated_position_bias
    ):
        time_major = hidden_states.transpose(
            0, 1
        ).contiguous()  # (T, B, D) in memory
        return super().torch_multi_head_self_attention(
            time_major.transpose(0, 1),
            attention_mask,
            gated_position_bias,  # (B, T, D) view
        )


class VesperTransformer(nn.Module):
    """Positional convolution + N pre-LN WavLM layers, without the final LayerNorm.

    It holds the modules of ``WavLMEncoderStableLayerNorm`` under the same names
    (``pos_conv_embed``, ``layers``) so that state dicts map one to one; the forward
    pass lives in :meth:`VesperEncoder.forward_from_cnn`, which also needs the mask
    embedding owned by the encoder.
    """

    def __init__(self, config):
        super().__init__()
        self.pos_conv_embed = WavLMPositionalConvEmbedding(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        # Only layer 0 owns the relative position embedding; it computes the bias once
        # and every later layer gates that same bias with its own gru_rel_pos_* weights.
        self.layers = nn.ModuleList(
            WavLMEncoderLayerStableLayerNorm(
                config, has_relative_position_bias=(i == 0)
            )
            for i in range(config.num_hidden_layers)
        )
        for layer in self.layers:
            # Holds no state of its own: parameter names and initialisation are unchanged.
            layer.attention.__class__ = ContiguousWavLMAttention


class VesperEncoder(WavLMPreTrainedModel):
    """WavLM (pre-LN, WavLM Large style) encoder with N layers, used as Vesper teacher or student.

    Parameter names equal those of ``transformers.WavLMModel`` minus the final encoder
    LayerNorm (``encoder.layer_norm.*``), so Hugging Face weights load directly and
    :func:`ser_modules.vesper.export.export_to_huggingface` writes a WavLM folder.

    The CNN feature extractor is frozen (no gradients), as in Vesper pretraining and
    fine-tuning.

    Arguments
    ---------
    config : transformers.WavLMConfig
        Architecture; ``num_hidden_layers`` is N. Must have ``do_stable_layer_norm=True``.
    normalize_waveform : bool
        Layer-norm each input waveform over its real samples (WavLM Large: True,
        WavLM Base: False).

    Example
    -------
    >>> config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...     intermediate_size=64, conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
    ...     num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
    ...     do_stable_layer_norm=True, feat_extract_norm="layer")
    >>> encoder = VesperEncoder(config).eval()
    >>> outputs = encoder(torch.randn(2, 800), torch.tensor([1.0, 0.5]))
    >>> sorted(outputs), outputs[2].shape
    ([1, 2], torch.Size([2, 79, 32]))
    """

    def __init__(self, config: WavLMConfig, normalize_waveform: bool = True):
        if not config.do_stable_layer_norm:
            raise ValueError(
                "VesperEncoder implements the pre-LN WavLM architecture (WavLM Large, "
                "do_stable_layer_norm=True); this config is post-LN (like WavLM Base). "
                "Use transformers.WavLMModel for post-LN models."
            )
        super().__init__(config)
        self.normalize_waveform = normalize_waveform
        self.feature_extractor = WavLMFeatureEncoder(config)
        self.feature_projection = WavLMFeatureProjection(config)
        # Same init as WavLMModel; always present because the student needs it.
        self.masked_spec_embed = nn.Parameter(
            torch.empty(config.hidden_size).uniform_()
        )
        self.encoder = VesperTransformer(config)
        self.post_init()
        self.feature_extractor._freeze_parameters()

    @property
    def num_layers(self):
        """Number of Transformer layers N."""
        return len(self.encoder.layers)

    @classmethod
    def from_wavlm(cls, source, num_layers=None, normalize_waveform=None):
        """Build an encoder from a Hugging Face WavLM (folder or ``WavLMModel``).

        Arguments
        ---------
        source : str | os.PathLike | transformers.WavLMModel
            Local folder written by ``save_pretrained`` or an in-memory model. For the
            original WavLM release (``.pt``), first run
            ``python -m ser_modules.upstreams.convert_wavlm_checkpoint``.
        num_layers : int, optional
            Keep only the first ``num_layers`` layers (default: all). To compress a
            teacher into a student use
            :func:`ser_modules.vesper.compression.build_student_from_teacher`.
        normalize_waveform : bool, optional
            None reads ``do_normalize`` from ``preprocessor_config.json`` of the folder;
            True when there is no such file or ``source`` is a model (WavLM Large).

        Returns
        -------
        VesperEncoder
            In eval mode, on CPU, with the source's weights.
        """
        if isinstance(source, WavLMModel):
            model = source
        else:
            model = WavLMModel.from_pretrained(source)
            if normalize_waveform is None:
                normalize_waveform = _read_do_normalize(source)
        if normalize_waveform is None:
            normalize_waveform = True
        total_layers = model.config.num_hidden_layers
        num_layers = total_layers if num_layers is None else num_layers
        if not 1 <= num_layers <= total_layers:
            raise ValueError(
                f"num_layers must be in [1, {total_layers}] for this WavLM, got {num_layers}."
            )
        config = copy.deepcopy(model.config)
        config.num_hidden_layers = num_layers
        encoder = cls(config, normalize_waveform=normalize_waveform)
        state = {
            key: value
            for key, value in model.state_dict().items()
            if not key.startswith(FINAL_LAYER_NORM_PREFIX)
            and (
                split_layer_key(key) is None
                or split_layer_key(key)[0] < num_layers
            )
        }
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        # A WavLM configured without masking (mask_time_prob = 0) has no mask embedding;
        # it then keeps its fresh init, which only matters if this encoder is trained.
        if unexpected or set(missing) - {"masked_spec_embed"}:
            raise ValueError(
                f"WavLM weights from {source!r} do not fit VesperEncoder: missing {missing}, "
                f"unexpected {unexpected}."
            )
        return encoder.eval()

    def frame_lengths(self, num_samples):
        """Number of CNN frames for waveforms of ``num_samples`` samples.

        Arguments
        ---------
        num_samples : torch.Tensor
            (B,) integer sample counts.

        Returns
        -------
        torch.Tensor
            (B,) integer frame counts (WavLM Large: 1 + (S - 400) // 320).
        """
        return self._get_feat_extract_output_lengths(
            num_samples, add_adapter=False
        )

    def extract_cnn_features(self, wavs, wav_lens=None):
        """Run the frozen CNN (with waveform normalisation) once for teacher and student.

        Runs under ``torch.no_grad()``. It may also run under ``torch.inference_mode()``:
        :meth:`forward_from_cnn` copies inference tensors when it needs gradients.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, S) waveforms at 16 kHz, right-padded.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths (1.0 = S samples). None means no padding.

        Returns
        -------
        cnn_feats : torch.Tensor
            (B, T', C) CNN outputs (C = config.conv_dim[-1], 512 for WavLM).
        frame_mask : torch.Tensor
            (B, T') bool, True on real frames and False on padding.
        """
        batch_size, num_samples = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch_size, device=wavs.device)
        abs_lens = relative_to_absolute(wav_lens, num_samples)  # (B,)
        frame_lens = self.frame_lengths(abs_lens)  # (B,)
        # Shape-only runs (meta tensors, e.g. FLOP counting) have no lengths to check.
        too_short = (
            []
            if abs_lens.is_meta
            else (frame_lens < 1).nonzero().flatten().tolist()
        )
        if too_short:
            min_samples = self.min_num_samples()
            raise ValueError(
                f"Utterances at batch positions {too_short} have {abs_lens[too_short].tolist()} samples, "
                f"fewer than the {min_samples} the CNN needs for one frame; drop or pad them in the data pipeline."
            )
        with torch.no_grad():
            if self.normalize_waveform:
                wavs = normalize_waveforms(wavs, abs_lens)
            cnn_feats = self.feature_extractor(wavs).transpose(
                1, 2
            )  # (B, T', C)
        frame_mask = padding_mask(frame_lens, cnn_feats.shape[1])  # (B, T')
        return cnn_feats, frame_mask

    def min_num_samples(self):
        """Smallest waveform length, in samples, that gives one CNN frame (400 for WavLM)."""
        samples = 1
        for kernel, stride in reversed(
            list(zip(self.config.conv_kernel, self.config.conv_stride))
        ):
            samples = (samples - 1) * stride + kernel
        return samples

    def forward_from_cnn(
        self,
        cnn_feats,
        frame_mask=None,
        phoneme_mask=None,
        word_mask=None,
        output_layers=None,
    ):
        """Run projection, positional convolution and Transformer layers on CNN features.

        Arguments
        ---------
        cnn_feats : torch.Tensor
            (B, T', C) output of :meth:`extract_cnn_features`.
        frame_mask : torch.Tensor, optional
            (B, T') bool, True on real frames. None means no padding.
        phoneme_mask : torch.Tensor, optional
            (B, T') bool; True frames are replaced by the mask embedding at the input
            of layer 1 (after the positional convolution). The returned layer 0 is the
            unmasked input.
        word_mask : torch.Tensor, optional
            (B, T') bool; True frames of the output of layer N // 2 are replaced by the
            mask embedding before layer N // 2 + 1.
        output_layers : sequence of int, optional
            1-based layers to return (0 = input of layer 1). Default (N // 2, N): the
            student's outputs, and for the 24-layer teacher its targets (12, 24).
            Layers after the largest requested one are not computed.

        Returns
        -------
        dict[int, torch.Tensor]
            Layer index -> (B, T', D) raw layer output (no final LayerNorm).
        """
        num_layers = self.num_layers
        word_mask_layer = num_layers // 2
        if output_layers is None:
            output_layers = (word_mask_layer, num_layers)
        output_layers = sorted(set(output_layers))
        if output_layers[0] < 0 or output_layers[-1] > num_layers:
            raise ValueError(
                f"output_layers must lie in [0, {num_layers}], got {output_layers}."
            )
        if word_mask is not None and word_mask_layer == 0:
            raise ValueError(
                "A word-level mask needs at least 2 layers (it is applied after layer N // 2)."
            )
        if cnn_feats.is_inference() and torch.is_grad_enabled():
            # Features computed under inference_mode cannot be saved for backward.
            cnn_feats = cnn_feats.clone()

        hidden, _ = self.feature_projection(cnn_feats)  # (B, T', D)
        if frame_mask is not None:
            # Padding must be zero before the positional convolution, as in WavLM.
            hidden = hidden.masked_fill(~frame_mask.unsqueeze(-1), 0.0)
        hidden = hidden + self.encoder.pos_conv_embed(hidden)
        hidden = self.encoder.dropout(hidden)  # (B, T', D)

        masks_before_layer = {0: phoneme_mask, word_mask_layer: word_mask}
        outputs = {}
        position_bias = None
        for index in range(output_layers[-1] + 1):
            # Outputs are recorded before the mask at that point: the loss on layer N/2
            # reads its output x'_{N/2}, and the word mask only alters what enters
            # layer N/2 + 1 (paper eqs. 11-13).
            if index in output_layers:
                outputs[index] = hidden
            if index == output_layers[-1]:
                break
            if masks_before_layer.get(index) is not None:
                hidden = self._apply_mask_embedding(
                    hidden, masks_before_layer[index]
                )
            hidden, position_bias = self.encoder.layers[index](
                hidden, attention_mask=frame_mask, position_bias=position_bias
            )
        return outputs

    def _apply_mask_embedding(self, hidden, mask):
        """Replace the frames where ``mask`` (B, T') is True by the mask embedding."""
        embedding = self.masked_spec_embed.to(hidden.dtype)  # (D,)
        return torch.where(mask.unsqueeze(-1), embedding, hidden)  # (B, T', D)

    def forward(
        self,
        wavs,
        wav_lens=None,
        phoneme_mask=None,
        word_mask=None,
        output_layers=None,
    ):
        """Waveforms to raw layer outputs: :meth:`extract_cnn_features` + :meth:`forward_from_cnn`.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, S) waveforms at 16 kHz, right-padded.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths.
        phoneme_mask, word_mask : torch.Tensor, optional
            (B, T') bool frame masks, see :meth:`forward_from_cnn`.
        output_layers : sequence of int, optional
            1-based layers to return; default (N // 2, N).

        Returns
        -------
        dict[int, torch.Tensor]
            Layer index -> (B, T', D) raw layer output.
        """
        cnn_feats, frame_mask = self.extract_cnn_features(wavs, wav_lens)
        return self.forward_from_cnn(
            cnn_feats, frame_mask, phoneme_mask, word_mask, output_layers
        )


def count_encoder_parameters(encoder):
    """Parameters of a Vesper encoder as counted in the Vesper paper (Table II).

    Counted: CNN feature extractor, post-CNN LayerNorm, 512 -> D projection, mask
    embedding, positional convolution and the N Transformer layers, i.e. every
    parameter of :class:`VesperEncoder` (frozen ones included). Not counted: the three
    pretraining predictors (3.15 M) and a final encoder LayerNorm, which Vesper does not
    have. Vesper-4: 63,515,872 (paper 63.52 M); Vesper-12: 164,289,952 (paper 164.29 M).

    Arguments
    ---------
    encoder : torch.nn.Module

    Returns
    -------
    int
    """
    return sum(parameter.numel() for parameter in encoder.parameters())


def count_wavlm_pretraining_parameters(
    config, final_dim, num_label_classes=504
):
    """Parameters of a WavLM as published (WavLM paper, copied into Vesper's Table II).

    The published WavLM sizes (Base 94.70 M, Large 316.62 M) count the pretraining
    model: the inference encoder (``transformers.WavLMModel``: 94.38 M / 315.45 M) plus
    the HuBERT-style prediction head used in pretraining, ``final_proj``
    (Linear(D, final_dim)) and ``label_embs_concat`` (num_label_classes x final_dim,
    500 k-means units + 4 fairseq dictionary symbols). This accounting is our
    reconstruction, not stated in either paper; it gives 94,707,824 and 316,627,392,
    the published values truncated to two decimals, for both models at once.

    Arguments
    ---------
    config : transformers.WavLMConfig
        The encoder architecture (built on the meta device, no memory used).
    final_dim : int
        Prediction-head dimension: 256 for WavLM Base, 768 for WavLM Large.
    num_label_classes : int
        Rows of the label embedding table.

    Returns
    -------
    int
    """
    with torch.device("meta"):
        model = WavLMModel(config)
    encoder_parameters = sum(
        parameter.numel() for parameter in model.parameters()
    )
    head_parameters = (
        config.hidden_size * final_dim
        + final_dim
        + num_label_classes * final_dim
    )
    return encoder_parameters + head_parameters


def split_layer_key(key):
    """Split a WavLM state-dict key of a Transformer layer.

    ``"encoder.layers.3.attention.k_proj.weight"`` -> ``(3, "attention.k_proj.weight")``;
    None for non-layer weights.
    """
    prefix = "encoder.layers."
    if not key.startswith(prefix):
        return None
    index, suffix = key[len(prefix) :].split(".", 1)
    return int(index), suffix


def _read_do_normalize(folder):
    """``do_normalize`` of a Hugging Face folder's preprocessor_config.json, None if absent."""
    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle).get("do_normalize")
