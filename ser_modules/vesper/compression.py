"""Compression at initialisation (Vesper paper, section III-A): build an N-layer student from an M-layer teacher.

Every non-layer weight (CNN, post-CNN LayerNorm, projection, mask embedding,
positional convolution) and the relative position embedding owned by layer 1 is
copied from the teacher; the methods differ only in how the Transformer layers start:

* ``extract`` (default, paper's choice): student layer i <- teacher layer i * (M // N)
  (0-based; Vesper-4 takes 0, 6, 12, 18 of WavLM Large, Vesper-12 takes 0, 2, ..., 22);
* ``average``: student layer i <- mean of teacher layers [i * (M // N), (i + 1) * (M // N));
* ``random``: the student's own fresh WavLM initialisation;
* ``distill``: initialised as ``extract``. What makes it the distillation baseline of
  Table V is the objective (plain distillation on unmasked input), which the
  pretraining recipe selects; nothing differs at initialisation.
"""

import copy

import torch

from ser_modules.vesper.encoder import VesperEncoder, split_layer_key

COMPRESSION_METHODS = ("extract", "average", "random", "distill")

# Owned by teacher layer 0 only (it computes the position bias that every layer gates),
# so it is copied as a shared weight, never averaged or re-initialised.
RELATIVE_POSITION_EMBEDDING_KEY = (
    "encoder.layers.0.attention.rel_attn_embed.weight"
)


def teacher_layers_for_student_layer(
    student_layer, num_student_layers, num_teacher_layers, method="extract"
):
    """Teacher layers (0-based) that initialise one student layer.

    Arguments
    ---------
    student_layer : int
        0-based student layer i.
    num_student_layers : int
        N.
    num_teacher_layers : int
        M.
    method : str
        One of :data:`COMPRESSION_METHODS`.

    Returns
    -------
    list[int]
        ``[i * (M // N)]`` for extract / distill, ``range(i * (M // N), (i + 1) * (M // N))``
        for average, ``[]`` for random.
    """
    stride = num_teacher_layers // num_student_layers
    if method in ("extract", "distill"):
        return [student_layer * stride]
    if method == "average":
        return list(range(student_layer * stride, (student_layer + 1) * stride))
    if method == "random":
        return []
    raise ValueError(
        f"Unknown compression method {method!r}; choose one of {COMPRESSION_METHODS}."
    )


def build_student_from_teacher(
    teacher_model, num_layers, method="extract", seed=None
):
    """Build a Vesper student with ``num_layers`` layers from a teacher encoder.

    Arguments
    ---------
    teacher_model : VesperEncoder | transformers.WavLMModel
        The M-layer teacher (WavLM Large for Vesper). It is not modified.
    num_layers : int
        N, 1 <= N <= M.
    method : str
        ``"extract"``, ``"average"``, ``"random"`` or ``"distill"`` (see module docstring).
    seed : int, optional
        Seeds the student's fresh initialisation (only visible with ``"random"``)
        without touching the global random state. None uses the global generator.

    Returns
    -------
    VesperEncoder
        The student, in train mode, on the teacher's device (float32), with a frozen CNN.
    """
    if method not in COMPRESSION_METHODS:
        raise ValueError(
            f"Unknown compression method {method!r}; choose one of {COMPRESSION_METHODS}."
        )
    if not isinstance(teacher_model, VesperEncoder):
        teacher_model = VesperEncoder.from_wavlm(teacher_model)
    num_teacher_layers = teacher_model.num_layers
    if not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(
            f"The student needs 1 to {num_teacher_layers} layers (the teacher's), got {num_layers}."
        )

    config = copy.deepcopy(teacher_model.config)
    config.num_hidden_layers = num_layers
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        student = VesperEncoder(
            config, normalize_waveform=teacher_model.normalize_waveform
        )

    teacher_state = teacher_model.state_dict()
    student_state = student.state_dict()
    for key in student_state:
        layer_suffix = split_layer_key(key)
        if layer_suffix is None or key == RELATIVE_POSITION_EMBEDDING_KEY:
            student_state[key] = teacher_state[key]
            continue
        student_layer, suffix = layer_suffix
        sources = teacher_layers_for_student_layer(
            student_layer, num_layers, num_teacher_layers, method
        )
        if sources:
            stacked = torch.stack(
                [teacher_state[f"encoder.layers.{j}.{suffix}"] for j in sources]
            )
            student_state[key] = stacked.mean(dim=0)
    student.load_state_dict(student_state)
    # Device only: a teacher kept in bf16 for inference must not make the student bf16.
    return student.to(next(teacher_model.parameters()).device).train()
