"""A fast inference-only forward of frozen WavLM / HuBERT / wav2vec 2.0 models (and Vesper).

:class:`FastSSLForward` computes the same hidden states as the Hugging Face model's forward
(``output_hidden_states=True``) from the *same parameter tensors*, with the work laid out for
a CPU (it runs on a GPU too). Profiling the Hugging Face forward of a Vesper-4-sized model
(WavLM Large's CNN and width, 4 layers) on 6.5 s of audio and 2 threads with
``torch.profiler`` showed where the time goes (``benchmarks/bench_inference_rtf.py --profile``
prints it again):

* ``mkldnn_convolution`` (~40 %): the seven CNN convolutions (4.9 GFLOP per audio second) and
  the grouped positional convolution (0.8), at about half the matmul throughput;
* ``copy_`` (~20 %) and ``native_layer_norm`` (~10 %): the CNN's layer norm runs on
  ``(B, T, C)`` but the convolutions want ``(B, C, T)``, so every CNN layer transposes and
  copies its activations twice;
* ``addmm`` (~18 %): the transformer's linear layers, already at the matmul throughput;
* GELU (~7 %); the attention itself (eager softmax over ``(B*H, T, T)``) is small for 6.5 s
  windows.

So this forward:

* keeps the CNN channels-last ``(B, T, C)`` from the waveform on: a convolution with stride
  ``s`` and kernel ``k`` reads, for output frame ``t``, the ``k*C`` *contiguous* values that
  start at frame ``t*s``; split in chunks of ``s`` taps, each chunk is a strided view of the
  input that BLAS reads in place (no im2col copy) and one GEMM with the weight reshaped once;
  the layer norm is then over the last, contiguous axis, and GELU runs in place: no
  transposes at all;
* computes the weight-normalised positional-convolution weight once (Hugging Face recomputes
  it on every call), fuses the three Q/K/V projections into one GEMM, and on CPU runs the
  linear layers through oneDNN with weights prepacked once and GELU fused into the FFN's
  first GEMM;
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
    if getattr(config, "add_adapter", False) or getattr(
        config, "adapter_attn_dim", None
    ):
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
        (batch, frames, kernel * channels),
        (x.stride(0), stride * channels, 1),
        x.storage_offset(),
    )


def _mkldnn_linear_available():
    try:
        weight = torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 2), 2)
        torch.ops.mkldnn._linear_pointwise(
            torch.ones(1, 2), weight, None, "gelu", [], "none"
        )
    except (AttributeError, RuntimeError):
        return False
    return True


# oneDNN's linear with a weight reordered once into its blocked layout (what
# torch.compile's CPU freezing does), and GELU fused into the same kernel: with plain
# ``F.linear`` the weights are re-laid out on every call and GELU is a second pass.
PACK_LINEARS = (
    torch.backends.mkldnn.is_available() and _mkldnn_linear_available()
)
PACK_BATCH_HINT = (
    512  # rows oneDNN tunes the packed layout for; any row count works
)


def _pack_linear(weight, bias, dtype, device):
    """A linear layer's weights for :func:`_linear`: ``(C_out, C_in)`` and ``(C_out,)``."""
    weight = weight.detach().to(dtype).contiguous()
    bias = None if bias is None else bias.detach().to(dtype)
    packed = None
    if PACK_LINEARS and torch.device(device).type == "cpu":
        packed = torch.ops.mkldnn._reorder_linear_weight(
            weight, PACK_BATCH_HINT
        )
    return {
        "weight": weight if packed is None else None,
        "packed": packed,
        "bias": bias,
    }


def _linear(x, layer, gelu=False):
    """``x @ W.T + b`` (then exact GELU when ``gelu``) with the weights of :func:`_pack_linear`."""
    if layer["packed"] is not None:
        if gelu:
            return torch.ops.mkldnn._linear_pointwise(
                x, layer["packed"], layer["bias"], "gelu", [], "none"
            )
        return torch.ops.mkldnn._linear_pointwise(
            x, layer["packed"], layer["bias"], "none", [], ""
        )
    out = F.linear(x, layer["weight"], layer["bias"])
    return _gelu_(out) if gelu else out


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
    On CPU the prepacked linear weights are a second copy of the transformer's weights (about
    +1.2 GB for WavLM Large in fp32, +0.6 GB in bf16): the price of not re-laying them out on
    every call.

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
            raise ValueError(
                f"The fast forward does not support this model: {reason}."
            )
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
        return tuple(
            parameter._version for parameter in self.model.parameters()
        )

    def _weights(self, device, dtype):
        """Derived weights for ``dtype`` on ``device`` (cached; rebuilt if parameters changed)."""
        key = (str(device), dtype)
        signature = self._signature()
        cached = self._prepared.get(key)
        if cached is not None and cached["signature"] == signature:
            return cached
        with torch.no_grad():
            cached = self._build_weights(dtype, device)
        cached["signature"] = signature
        self._prepared[key] = cached
        return cached

    def _build_weights(self, dtype, device):
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
            out_channels, in_channels, kernel = weight.shape
            stride = conv.stride[0]
            # (C_out, k*C_in), column j*C_in + c = weight[:, c, j]: the tap-major order of
            # consecutive channels-last frames. Taps are split in chunks of ``stride`` frames:
            # chunk q of output t reads frames (t+q)*stride ..., a strided view (see _cnn).
            flat = weight.permute(0, 2, 1).reshape(
                out_channels, kernel * in_channels
            )
            chunks = []
            for first in range(0, kernel, stride):
                width = min(stride, kernel - first)
                chunks.append(
                    (
                        first,
                        width,
                        cast(
                            flat[
                                :,
                                first * in_channels : (first + width)
                                * in_channels,
                            ]
                        ).t(),
                    )
                )
            norm = getattr(layer, "layer_norm", None)
            cnn.append(
                {
                    "kernel": kernel,
                    "stride": stride,
                    "chunks": chunks,
                    "bias": cast(conv.bias),
                    "layer_norm": (cast(norm.weight), cast(norm.bias), norm.eps)
                    if isinstance(norm, torch.nn.LayerNorm)
                    else None,
                    "group_norm": norm_params(norm)
                    if isinstance(norm, torch.nn.GroupNorm)
                    else None,
                }
            )

        projection = model.feature_projection
        proj_norm = getattr(projection, "layer_norm", None)
        if getattr(projection, "feat_proj_layer_norm", True) is False:
            proj_norm = None
        pos_conv = model.encoder.pos_conv_embed.conv
        weights = {
            "cnn": cnn,
            "proj_norm": norm_params(proj_norm)
            if proj_norm is not None
            else None,
            "projection": _pack_linear(
                projection.projection.weight,
                projection.projection.bias,
                dtype,
                device,
            ),
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
                qkv_bias = torch.cat(
                    [
                        attention.q_proj.bias,
                        attention.k_proj.bias,
                        attention.v_proj.bias,
                    ]
                )
            qkv_weight = torch.cat(
                [
                    attention.q_proj.weight,
                    attention.k_proj.weight,
                    attention.v_proj.weight,
                ]
            )
            feed_forward = layer.feed_forward
            entry = {
                "heads": attention.num_heads,
                "qkv": _pack_linear(qkv_weight, qkv_bias, dtype, device),
                "out": _pack_linear(
                    attention.out_proj.weight,
                    attention.out_proj.bias,
                    dtype,
                    device,
                ),
                "norm1": norm_params(layer.layer_norm),
                "norm2": norm_params(layer.final_layer_norm),
                "ffn_in": _pack_linear(
                    feed_forward.intermediate_dense.weight,
                    feed_forward.intermediate_dense.bias,
                    dtype,
                    device,
                ),
                "ffn_out": _pack_linear(
                    feed_forward.output_dense.weight,
                    feed_forward.output_dense.bias,
                    dtype,
                    device,
                ),
            }
            if self.is_wavlm:
                # The gate's 8 outputs are summed in pairs of 4 (view(..., 2, 4).sum(-1)):
                # summing the weight rows first gives the same two values from a 2-output GEMM.
                gate_weight = (
                    attention.gru_rel_pos_linear.weight.detach()
                )  # (8, hd)
                gate_bias = attention.gru_rel_pos_linear.bias.detach()  # (8,)
                entry["gate_weight"] = gate_weight.view(2, 4, -1).sum(
                    1
                )  # (2, hd), fp32
                entry["gate_bias"] = gate_bias.view(2, 4).sum(1)  # (2,)
                entry["gate_const"] = attention.gru_rel_pos_const.detach().view(
                    -1
                )  # (H,)
            weights["layers"].append(entry)
        return weights

    # ------------------------------------------------------------------ pieces
    def _cnn(self, wavs, weights, dtype):
        """``(B, T)`` waveforms -> ``(B, T', C)`` CNN features, channels-last throughout.

        A convolution (kernel ``k``, stride ``s``) is a sum of GEMMs over chunks of ``s``
        taps: chunk ``q`` of output frame ``t`` reads the ``w*C`` consecutive values from
        frame ``(t+q)*s`` on, i.e. row ``t`` of a view with row stride ``s*C`` that BLAS
        reads in place (leading dimension ``s*C >= w*C``). No im2col copy, no transposes;
        the layer norm is over the contiguous last axis and GELU runs in place.
        """
        x = wavs.to(dtype).unsqueeze(-1).contiguous()  # (B, T, 1)
        batch = x.shape[0]
        for layer in weights["cnn"]:
            length, channels = x.shape[1], x.shape[2]
            kernel, stride = layer["kernel"], layer["stride"]
            frames = (length - kernel) // stride + 1
            out = x.new_empty(batch, frames, layer["chunks"][0][2].shape[1])
            for index in range(batch):
                for number, (first, width, weight) in enumerate(
                    layer["chunks"]
                ):
                    view = x[index].as_strided(
                        (frames, width * channels),
                        (stride * channels, 1),
                        x[index].storage_offset() + first * channels,
                    )
                    if number == 0:
                        if layer["bias"] is not None:
                            torch.addmm(
                                layer["bias"], view, weight, out=out[index]
                            )
                        else:
                            torch.mm(view, weight, out=out[index])
                    else:
                        out[index].addmm_(view, weight)
            if layer["layer_norm"] is not None:
                weight, bias, eps = layer["layer_norm"]
                out = F.layer_norm(out, (out.shape[-1],), weight, bias, eps)
            elif layer["group_norm"] is not None:
                # GroupNorm with one group per channel: statistics over time, per channel.
                weight, bias, eps = layer["group_norm"]
                out32 = out.float()
                variance, mean = torch.var_mean(
                    out32, dim=1, keepdim=True, correction=0
                )
                out = (
                    (out32 - mean) * torch.rsqrt(variance + eps) * weight + bias
                ).to(dtype)
            x = _gelu_(out)
        return x

    def _positional(self, hidden, weights):
        """Convolutional positional embedding of ``(B, T', D)`` -> ``(B, T', D)``."""
        # oneDNN's grouped convolution runs ~15 % faster on a contiguous (B, D, T) input.
        conv = F.conv1d(
            hidden.transpose(1, 2).contiguous(),
            weights["pos_weight"],
            weights["pos_bias"],
            padding=weights["pos_padding"],
            groups=weights["pos_groups"],
        )
        if weights["pos_remove"]:
            conv = conv[:, :, : -weights["pos_remove"]]
        return _gelu_(conv.transpose(1, 2).contiguous())

    def _attention(self, hidden, entry, position_bias, key_mask, dtype):
        """Multi-head self-attention of ``(B, T, D)`` (already layer-normed for pre-LN)."""
        batch, length, width = hidden.shape
        heads = entry["heads"]
        head_dim = width // heads
        qkv = _linear(hidden.to(dtype), entry["qkv"])  # (B, T, 3D)
        qkv = qkv.view(batch, length, 3, heads, head_dim).permute(
            2, 0, 3, 1, 4
        )  # (3, B, H, T, hd)
        mask = key_mask  # (B, 1, 1, T) additive, or None
        if self.is_wavlm:
            # Gate of the relative-position bias from the layer's input, per head and frame.
            # (A contiguous (B*T*H, hd) GEMM: on the (B, H, T, hd) view HF uses, the matmul
            # becomes a batched GEMM with 2 columns, about 10x slower.)
            gate_in = hidden.float().reshape(batch * length * heads, head_dim)
            gate_ab = torch.sigmoid(
                F.linear(gate_in, entry["gate_weight"], entry["gate_bias"])
            )  # (B*T*H, 2)
            gate_ab = gate_ab.view(batch, length, heads, 2).permute(
                3, 0, 2, 1
            )  # (2, B, H, T)
            gate = (
                gate_ab[0] * (gate_ab[1] * entry["gate_const"][:, None] - 1.0)
                + 2.0
            )  # (B, H, T)
            # The gated bias is written straight in the compute dtype (one pass, no fp32 copy).
            bias = torch.empty(
                batch, heads, length, length, dtype=dtype, device=hidden.device
            )
            torch.mul(
                gate.unsqueeze(-1), position_bias, out=bias
            )  # (B, H, T, T)
            mask = bias if mask is None else bias.add_(mask)
        elif mask is not None:
            mask = mask.to(dtype)
        attended = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=mask
        )  # (B, H, T, hd)
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        return _linear(attended, entry["out"])

    def _feed_forward(self, hidden, entry, dtype):
        return _linear(
            _linear(hidden.to(dtype), entry["ffn_in"], gelu=True),
            entry["ffn_out"],
        )

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
                # fp32 statistics; also, not every device has mixed-dtype layer norm.
                features = self._norm(
                    features.float(), weights["proj_norm"], dtype
                )
            hidden = _linear(
                features, weights["projection"]
            ).float()  # (B, T', D)
            batch, length, _ = hidden.shape

            key_mask = None
            if frame_lengths is not None:
                valid = (
                    torch.arange(length, device=hidden.device)[None, :]
                    < frame_lengths[:, None]
                )  # (B, T')
                if not bool(valid.all()):
                    hidden = hidden * valid[:, :, None]
                    key_mask = torch.zeros(
                        batch, 1, 1, length, device=hidden.device
                    )
                    key_mask.masked_fill_(
                        ~valid[:, None, None, :], float("-inf")
                    )

            positions = self._positional(hidden.to(dtype), weights).float()
            hidden = hidden + positions
            if not self.stable_layer_norm:
                hidden = self._norm(hidden, weights["encoder_norm"])

            position_bias = None
            if self.is_wavlm and max(keep) > 0:
                first = self.model.encoder.layers[0].attention
                buckets = _relative_position_bucket(
                    first, length, hidden.device
                )
                position_bias = (
                    first.rel_attn_embed.weight[buckets]
                    .permute(2, 0, 1)
                    .float()
                )  # (H, T, T)

            states = {0: hidden} if 0 in wanted else {}
            # Layers above the highest kept state never influence the result.
            for index, entry in enumerate(weights["layers"][: max(keep)], 1):
                if self.stable_layer_norm:
                    normed = self._norm(hidden, entry["norm1"])
                    # fp32 + bf16 promotes to fp32 in one kernel: the residual stream stays fp32.
                    hidden = hidden + self._attention(
                        normed, entry, position_bias, key_mask, dtype
                    )
                    normed = self._norm(hidden, entry["norm2"])
                    hidden = hidden + self._feed_forward(normed, entry, dtype)
                else:
                    attended = self._attention(
                        hidden, entry, position_bias, key_mask, dtype
                    )
                    hidden = self._norm(hidden + attended, entry["norm1"])
                    hidden = self._norm(
                        hidden + self._feed_forward(hidden, entry, dtype),
                        entry["norm2"],
                    )
                if index in wanted:
                    states[index] = hidden
        return [states[index] for index in keep]


def max_relative_error(fast_states, reference_states):
    """Largest ``max|a - b| / max|b|`` over pairs of tensors (the test's tolerance measure)."""
    worst = 0.0
    for fast, reference in zip(fast_states, reference_states):
        scale = reference.abs().max().clamp(min=1e-12)
        worst = max(
            worst, float((fast.float() - reference.float()).abs().max() / scale)
        )
    return worst


__all__ = ["FastSSLForward", "unsupported_reason", "max_relative_error"]
