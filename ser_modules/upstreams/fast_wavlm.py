"""A fast inference-only forward of frozen WavLM / HuBERT / wav2vec 2.0 models (and Vesper).

:class:`FastSSLForward` computes the same hidden states as the Hugging Face model's forward
(``output_hidden_states=True``) from the *same parameter tensors*, with the work laid out for
a CPU (it runs on a GPU too). Profiling the Hugging Face forward of a Vesper-4-sized model
(WavLM Large's CNN and width, 4 layers) on 6.5 s of audio and 2 threads with
``torch.profiler`` showed where the time goes (``benchmarks/bench_inference_rtf.py --profile``
prints it again):

* ``mkldnn_convolution`` (~40 %): the seven CNN convolutions (4.9 GFLOP per audio second) and
  the grouped positional convolution, at about half the matmul throughput;
* ``copy_`` (~20 %) and ``native_layer_norm`` (~10 %): the CNN's layer norm runs on
  ``(B, T, C)`` but the convolutions want ``(B, C, T)``, so every CNN layer transposes and
  copies its activations twice;
* ``addmm`` (~18 %): the transformer's linear layers, already at the matmul throughput;
* GELU (~7 %); the attention itself (eager softmax over ``(B*H, T, T)``) is small for 6.5 s
  windows.

So this forward:

* keeps the CNN channels-last ``(B, T, C)`` from the waveform on: a convolution with stride
  ``s`` and kernel ``k`` reads, for output frame ``t``, the ``k*C`` *contiguous* values that
  start at frame ``t*s``, so it is one strided view (no unfold copy in the layout) and one
  GEMM with the weight reshaped once to ``(C_out, k*C_in)``; the layer norm is then over the
  last, contiguous axis, and GELU runs in place: no transposes at all;
* computes the weight-normalised positional-convolution weight once (Hugging Face recomputes
  it on every call) and fuses the three Q/K/V projections into one GEMM;
* runs attention through ``torch.nn.functional.scaled_dot_product_attention`` (the fused CPU
  flash kernel), with WavLM's gated relative-position bias (and the key padding mask) as its
  additive float ``attn_mask``;
* under bf16 autocast, runs a native bf16 path instead (weights converted once, activations
  in bf16, the residual stream and layer-norm statistics in fp32), instead of autocast's
  per-op casts of fp32 weights.

Everything else (bucketing of relative positions, gates, masks) follows the Hugging Face code
operation by operation, so fp32 outputs agree to float rounding (``tests/test_fast_wavlm.py``
checks every hidden state to 1e-4 relative to its scale on padded batches of unequal lengths).

The Hugging Face model stays the reference: :class:`~ser_modules.upstreams.HuggingFaceUpstream`
uses this forward only when ``fast_path=True`` (the default) and the model is a configuration
this module supports (:func:`unsupported_reason`).
"""

import torch
import torch.nn.functional as F

SUPPORTED_ACTIVATIONS = {"gelu"}


def unsupported_reason(model):
    """Why the fast forward cannot reproduce ``model`` (``None`` when it can).

    Arguments
    ---------
    model : transformers.PreTrainedModel
        A ``WavLMModel``, ``HubertModel`` or ``Wav2Vec2Model``.

    Returns
    -------
    str or None
    """
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in ("wavlm", "hubert", "wav2vec2"):
        return f"model_type {model_type!r} is not WavLM, HuBERT or wav2vec 2.0"
    if config.feat_extract_activation not in SUPPORTED_ACTIVATIONS:
        return f"CNN activation {config.feat_extract_activation!r}"
    if config.hidden_act not in SUPPORTED_ACTIVATIONS:
        return f"transformer activation {config.hidden_act!r}"
    if getattr(config, "conv_pos_batch_norm", False):
        return "batch-norm positional convolution"
    if getattr(config, "add_adapter", False) or getattr(config, "adapter_attn_dim", None):
        return "adapter layers"
    if getattr(model.encoder, "pos_conv_embed", None) is None:
        return "no convolutional positional embedding"
    return None


def _strided_frames(x, kernel, stride):
    """``(B, T, C)`` -> ``(B, T', kernel*C)`` view: row ``t`` is frames ``t*stride ...`` flattened.

    Frames ``t*stride .. t*stride+kernel-1`` of a contiguous ``(B, T, C)`` tensor are
    ``kernel*C`` consecutive values, so the im2col matrix of a 1-D convolution is a view.
    """
    batch, length, channels = x.shape
    frames = (length - kernel) // stride + 1
    return x.as_strided(
        (batch, frames, kernel * channels), (x.stride(0), stride * channels, 1), x.storage_offset()
    )


def _gelu_(x):
    """Exact (erf) GELU in place, as ``ACT2FN["gelu"]``."""
    return torch.ops.aten.gelu_(x)


def _relative_position_bucket(attention, length, device):
    """WavLM's ``(T, T)`` relative-position buckets, as ``WavLMAttention._relative_positions_bucket``."""
    context = torch.arange(length, dtype=torch.long, device=device)[:, None]
    memory = torch.arange(length, dtype=torch.long, device=device)[None, :]
    return attention._relative_positions_bucket(memory - context)


class FastSSLForward(torch.nn.Module):
    """Inference-only forward of a frozen Hugging Face WavLM / HuBERT / wav2vec 2.0 model.

    The model's parameters are read, not copied, in fp32; derived weights (reshaped CNN
    kernels, the positional-convolution weight, fused Q/K/V, bf16 copies) are built on first
    use per device and dtype, and rebuilt if a parameter changes in place (``load_state_dict``).

    Arguments
    ---------
    model : transformers.PreTrainedModel
        The (frozen, eval-mode) Hugging Face model; see :func:`unsupported_reason`.

    Example
    -------
    >>> fast = FastSSLForward(hf_model)  # doctest: +SKIP
    >>> states = fast(wavs, frame_lengths, keep=[0, 4])  # [(B, T', D), (B, T', D)]  # doctest: +SKIP
    """

    def __init__(self, model):
        super().__init__()
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"The fast forward does not support this model: {reason}.")
        # A plain attribute, not a submodule: the parameters stay owned (and saved) by the
        # Hugging Face model only.
        self.__dict__["model"] = model
        self.config = model.config
        self.is_wavlm = self.config.model_type == "wavlm"
        self.stable_layer_norm = bool(self.config.do_stable_layer_norm)
        self.group_norm_cnn = self.config.feat_extract_norm == "group"
        self._prepared = {}

    # ------------------------------------------------------------------ weights
    def _signature(self):
        return tuple(parameter._version for parameter in self.model.parameters())

    def _weights(self, device, dtype):
        """Derived weights for ``dtype`` on ``device`` (cached; rebuilt if parameters changed)."""
        key = (str(device), dtype)
        signature = self._signature()
        cached = self._prepared.get(key)
        if cached is not None and cached["signature"] == signature:
            return cached
        with torch.no_grad():
            cached = self._build_weights(dtype)
        cached["signature"] = signature
        self._prepared[key] = cached
        return cached

    def _build_weights(self, dtype):
        model = self.model

        def cast(tensor):
            return None if tensor is None else tensor.detach().to(dtype)

        def norm_params(module):
            # Normalisation statistics and affine parameters stay fp32 (F.layer_norm accepts
            # bf16 inputs with fp32 weights on CPU and computes in fp32).
            return (module.weight.detach(), module.bias.detach(), module.eps)

        cnn = []
        for layer in model.feature_extractor.conv_layers:
            conv = layer.conv
            weight = conv.weight.detach()  # (C_out, C_in, k)
            cnn.append({
                "kernel": conv.kernel_size[0],
                "stride": conv.stride[0],
                # (C_out, k*C_in), column j*C_in + c = weight[:, c, j]: matches _strided_frames.
                "weight": cast(weight.permute(0, 2, 1).reshape(weight.shape[0], -1)).contiguous(),
                "bias": cast(conv.bias),
                "layer_norm": norm_params(layer.layer_norm)
                if isinstance(getattr(layer, "layer_norm", None), torch.nn.LayerNorm) else None,
                "group_norm": norm_params(layer.layer_norm)
                if isinstance(getattr(layer, "layer_norm", None), torch.nn.GroupNorm) else None,
            })

        projection = model.feature_projection
        proj_norm = getattr(projection, "layer_norm", None)
        if getattr(projection, "feat_proj_layer_norm", True) is False:
            proj_norm = None
        pos_conv = model.encoder.pos_conv_embed.conv
        weights = {
            "cnn": cnn,
            "proj_norm": norm_params(proj_norm) if proj_norm is not None else None,
            "proj_weight": cast(projection.projection.weight),
            "proj_bias": cast(projection.projection.bias),
            # Evaluating the weight-norm parametrisation once (HF does it on every call).
            "pos_weight": cast(pos_conv.weight),
            "pos_bias": cast(pos_conv.bias),
            "pos_padding": pos_conv.padding[0],
            "pos_groups": pos_conv.groups,
            "pos_remove": model.encoder.pos_conv_embed.padding.num_pad_remove,
            "encoder_norm": norm_params(model.encoder.layer_norm),
            "layers": [],
        }
        for layer in model.encoder.layers:
            attention = layer.attention
            qkv_bias = None
            if attention.q_proj.bias is not None:
                qkv_bias = torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias])
            entry = {
                "qkv_weight": cast(torch.cat(
                    [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]
                )),
                "qkv_bias": cast(qkv_bias),
                "out_weight": cast(attention.out_proj.weight),
                "out_bias": cast(attention.out_proj.bias),
                "norm1": norm_params(layer.layer_norm),
                "norm2": norm_params(layer.final_layer_norm),
                "ffn_in_weight": cast(layer.feed_forward.intermediate_dense.weight),
                "ffn_in_bias": cast(layer.feed_forward.intermediate_dense.bias),
                "ffn_out_weight": cast(layer.feed_forward.output_dense.weight),
                "ffn_out_bias": cast(layer.feed_forward.output_dense.bias),
            }
            if self.is_wavlm:
                # The gate's 8 outputs are summed in pairs of 4 (view(..., 2, 4).sum(-1)):
                # summing the weight rows first gives the same two values from a 2-output GEMM.
                gate_weight = attention.gru_rel_pos_linear.weight.detach()  # (8, hd)
                gate_bias = attention.gru_rel_pos_linear.bias.detach()  # (8,)
                entry["gate_weight"] = gate_weight.view(2, 4, -1).sum(1)  # (2, hd), fp32
                entry["gate_bias"] = gate_bias.view(2, 4).sum(1)  # (2,)
                entry["gate_const"] = attention.gru_rel_pos_const.detach().view(-1)  # (H,)
            weights["layers"].append(entry)
        return weights

    # ------------------------------------------------------------------ pieces
    def _cnn(self, wavs, weights, dtype):
        """``(B, T)`` waveforms -> ``(B, T', C)`` CNN features, channels-last throughout."""
        x = wavs.to(dtype).unsqueeze(-1)  # (B, T, 1)
        for layer in weights["cnn"]:
            x = _strided_frames(x.contiguous(), layer["kernel"], layer["stride"])
            x = F.linear(x, layer["weight"], layer["bias"])  # (B, T', C_out)
            if layer["layer_norm"] is not None:
                weight, bias, eps = layer["layer_norm"]
                x = F.layer_norm(x, (x.shape[-1],), weight.to(dtype), bias.to(dtype), eps)
            elif layer["group_norm"] is not None:
                # GroupNorm with one group per channel: statistics over time, per channel.
                weight, bias, eps = layer["group_norm"]
                x32 = x.float()
                variance, mean = torch.var_mean(x32, dim=1, keepdim=True, correction=0)
                x = ((x32 - mean) * torch.rsqrt(variance + eps) * weight + bias).to(dtype)
            x = _gelu_(x)
        return x

    def _positional(self, hidden, weights):
        """Convolutional positional embedding of ``(B, T', D)`` -> ``(B, T', D)``."""
        conv = F.conv1d(
            hidden.transpose(1, 2), weights["pos_weight"], weights["pos_bias"],
            padding=weights["pos_padding"], groups=weights["pos_groups"],
        )
        if weights["pos_remove"]:
            conv = conv[:, :, : -weights["pos_remove"]]
        return _gelu_(conv.transpose(1, 2).contiguous())

    def _attention(self, hidden, layer, entry, position_bias, key_mask, dtype):
        """Multi-head self-attention of ``(B, T, D)`` (already layer-normed for pre-LN)."""
        batch, length, width = hidden.shape
        heads = layer.attention.num_heads
        head_dim = width // heads
        qkv = F.linear(hidden.to(dtype), entry["qkv_weight"], entry["qkv_bias"])  # (B, T, 3D)
        qkv = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
        mask = key_mask  # (B, 1, 1, T) additive, or None
        if self.is_wavlm:
            # Gate of the relative-position bias from the layer's input, per head and frame.
            gate_in = hidden.float().view(batch, length, heads, head_dim).transpose(1, 2)  # (B, H, T, hd)
            gate_a, gate_b = torch.sigmoid(F.linear(gate_in, entry["gate_weight"], entry["gate_bias"])).unbind(-1)
            gate = gate_a * (gate_b * entry["gate_const"][:, None] - 1.0) + 2.0  # (B, H, T)
            bias = gate.unsqueeze(-1) * position_bias  # (B, H, T, T)
            mask = bias if mask is None else bias + mask
        if mask is not None:
            mask = mask.to(dtype)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)  # (B, H, T, hd)
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        return F.linear(attended, entry["out_weight"], entry["out_bias"])

    def _feed_forward(self, hidden, entry, dtype):
        inner = _gelu_(F.linear(hidden.to(dtype), entry["ffn_in_weight"], entry["ffn_in_bias"]))
        return F.linear(inner, entry["ffn_out_weight"], entry["ffn_out_bias"])

    @staticmethod
    def _norm(x, params, dtype=None):
        weight, bias, eps = params
        out = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
        return out if dtype is None else out.to(dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, wavs, frame_lengths=None, keep=None, dtype=torch.float32):
        """Hidden states of a batch, as the Hugging Face forward with ``output_hidden_states``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` waveforms (already normalised if the model expects it).
        frame_lengths : torch.Tensor, optional
            ``(B,)`` valid frames per utterance (the CNN output-length formula of the valid
            samples), for a padded batch of a layer-norm-CNN model: padded frames are zeroed
            before the positional convolution and never attended to, as the Hugging Face
            attention mask does. ``None``: no padding.
        keep : list of int, optional
            Hidden-state indices to return (0 = input of the first layer); ``None``: all.
        dtype : torch.dtype
            ``torch.float32`` (the reference precision) or ``torch.bfloat16`` / ``float16``
            (matmuls and activations in that dtype, residual stream and norms in fp32).

        Returns
        -------
        list of torch.Tensor
            The kept hidden states, each ``(B, T', D)`` float32, in the order of ``keep``.
        """
        num_states = len(self.model.encoder.layers) + 1
        keep = list(range(num_states)) if keep is None else list(keep)
        wanted = set(keep)
        weights = self._weights(wavs.device, dtype)

        with torch.no_grad():
            features = self._cnn(wavs, weights, dtype)  # (B, T', C)
            if weights["proj_norm"] is not None:
                features = self._norm(features, weights["proj_norm"], dtype)
            hidden = F.linear(features, weights["proj_weight"], weights["proj_bias"]).float()  # (B, T', D)
            batch, length, _ = hidden.shape

            key_mask = None
            if frame_lengths is not None:
                valid = torch.arange(length, device=hidden.device)[None, :] < frame_lengths[:, None]  # (B, T')
                if not bool(valid.all()):
                    hidden = hidden * valid[:, :, None]
                    key_mask = torch.zeros(batch, 1, 1, length, device=hidden.device)
                    key_mask.masked_fill_(~valid[:, None, None, :], float("-inf"))

            positions = self._positional(hidden.to(dtype), weights).float()
            hidden = hidden + positions
            if not self.stable_layer_norm:
                hidden = self._norm(hidden, weights["encoder_norm"])

            position_bias = None
            if self.is_wavlm:
                first = self.model.encoder.layers[0].attention
                buckets = _relative_position_bucket(first, length, hidden.device)
                position_bias = first.rel_attn_embed.weight[buckets].permute(2, 0, 1).float()  # (H, T, T)

            states = {0: hidden} if 0 in wanted else {}
            for index, (layer, entry) in enumerate(zip(self.model.encoder.layers, weights["layers"]), 1):
                if self.stable_layer_norm:
                    normed = self._norm(hidden, entry["norm1"])
                    hidden = hidden + self._attention(normed, layer, entry, position_bias, key_mask, dtype).float()
                    normed = self._norm(hidden, entry["norm2"])
                    hidden = hidden + self._feed_forward(normed, entry, dtype).float()
                else:
                    attended = self._attention(hidden, layer, entry, position_bias, key_mask, dtype).float()
                    hidden = self._norm(hidden + attended, entry["norm1"])
                    hidden = self._norm(hidden + self._feed_forward(hidden, entry, dtype).float(), entry["norm2"])
                if index in wanted:
                    states[index] = hidden
                if index >= max(keep):
                    break
        return [states[index] for index in keep]


def max_relative_error(fast_states, reference_states):
    """Largest ``max|a - b| / max|b|`` over pairs of tensors (the test's tolerance measure)."""
    worst = 0.0
    for fast, reference in zip(fast_states, reference_states):
        scale = reference.abs().max().clamp(min=1e-12)
        worst = max(worst, float((fast.float() - reference.float()).abs().max() / scale))
    return worst


__all__ = ["FastSSLForward", "unsupported_reason", "max_relative_error"]
