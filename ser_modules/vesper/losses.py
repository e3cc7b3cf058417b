"""Vesper's pretraining objective: hierarchical and cross-layer self-supervision.

The student (Vesper, N layers) predicts the frozen teacher's (WavLM Large, M layers)
representations through three small predictors (Vesper paper, sections III-B2 and III-B3):

- ``L_l``: P1(student layer N/2) -> teacher layer M/2, on phoneme-masked frames;
- ``L_h``: P2(student layer N) -> teacher layer M (before the final LayerNorm), on
  word-masked frames;
- ``L_x``: P3(student layer N) -> teacher layer M/2, on every valid (unpadded) frame.

``L = weight_low * L_l + weight_high * L_h + weight_cross * L_x`` (1.0, 0.1, 1.0 in the paper).
Each MSE is the mean over all selected elements; targets are not normalised.
"""

from torch import nn

OBJECTIVES = ("vesper", "distill")


class Predictor(nn.Sequential):
    """Maps a student representation to a teacher one, frame by frame.

    LayerNorm without affine parameters -> Linear(dim, hidden) -> GELU -> Linear(hidden, dim).

    Arguments
    ---------
    dim : int
        Representation size of student and teacher (1024 for WavLM Large).
    hidden : int, optional
        Hidden size; ``dim // 2`` (512 for 1024) when None.
    """

    def __init__(self, dim, hidden=None):
        hidden = dim // 2 if hidden is None else hidden
        super().__init__(
            nn.LayerNorm(dim, elementwise_affine=False),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )


def predicted_mse(predictor, inputs, targets, frame_mask):
    """Mean squared error between ``predictor(inputs)`` and ``targets`` on selected frames.

    Frames are selected before the predictor runs (it works frame by frame), so unselected
    frames, padding included, cost nothing and cannot reach the loss. An empty selection
    gives an exact 0 that still depends on the predictor, so ``backward`` works.

    Arguments
    ---------
    predictor : torch.nn.Module
        Frame-wise map from ``D`` to ``D``.
    inputs : torch.Tensor
        ``(B, T, D)`` student representations.
    targets : torch.Tensor
        ``(B, T, D)`` teacher representations (may come from ``torch.inference_mode``).
    frame_mask : torch.BoolTensor
        ``(B, T)`` True on the frames that enter the loss.

    Returns
    -------
    torch.Tensor
        Scalar: sum of squared errors over the selected elements / their number.
    """
    predictions = predictor(inputs[frame_mask])  # (K, D)
    # Indexing copies the targets into an ordinary tensor, which autograd may save even
    # when the teacher ran under inference mode.
    selected_targets = targets[frame_mask].detach()  # (K, D)
    squared_error = nn.functional.mse_loss(
        predictions, selected_targets, reduction="sum"
    )
    return squared_error / max(selected_targets.numel(), 1)


class VesperPretrainingLoss(nn.Module):
    """Vesper's pretraining loss with its predictors, or the distillation ablation.

    Arguments
    ---------
    dim : int
        Representation size (1024 for WavLM Large).
    predictor_hidden : int, optional
        Hidden size of the predictors; ``dim // 2`` when None.
    weight_low : float
        Weight of ``L_l`` (student middle layer -> teacher middle layer, phoneme-masked frames).
    weight_high : float
        Weight of ``L_h`` (student last layer -> teacher last layer, word-masked frames).
    weight_cross : float
        Weight of ``L_x`` (student last layer -> teacher middle layer, all valid frames).
    use_low, use_high, use_cross : bool
        Switch each term on or off (Table VII ablation). A disabled term is not computed
        and its predictor is not created, so it holds no parameters that would go unused
        (which distributed training rejects).
    objective : str
        ``"vesper"`` (the paper's objective, masked input) or ``"distill"`` (compression
        ablation of Table V: plain distillation on unmasked input). ``"distill"`` keeps the
        two layer-to-layer terms with their predictors and weights, computed on every
        valid frame instead of the masked ones, and has no cross-layer term: only the
        frame selection differs from ``"vesper"``, so the ablation isolates masked
        prediction. The caller feeds the student unmasked input in that case.

    Example
    -------
    >>> loss_fn = VesperPretrainingLoss(dim=8)
    >>> hidden = torch.randn(2, 5, 8)
    >>> mask = torch.zeros(2, 5, dtype=torch.bool)
    >>> mask[:, :2] = True
    >>> losses = loss_fn(hidden, hidden, hidden, hidden, mask, mask, torch.ones(2, 5, dtype=torch.bool))
    >>> sorted(losses)
    ['loss', 'loss_cross', 'loss_high', 'loss_low']
    """

    def __init__(
        self,
        dim,
        predictor_hidden=None,
        weight_low=1.0,
        weight_high=0.1,
        weight_cross=1.0,
        use_low=True,
        use_high=True,
        use_cross=True,
        objective="vesper",
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(
                f"Unknown pretraining objective {objective!r}: set the loss's `objective` hparam "
                f"to one of {OBJECTIVES}."
            )
        use_cross = use_cross and objective == "vesper"
        if not (use_low or use_high or use_cross):
            raise ValueError(
                f"Every term of the {objective!r} objective is disabled (use_low, use_high"
                f"{', use_cross' if objective == 'vesper' else ''}): enable at least one."
            )
        self.objective = objective
        self.weights = {
            "low": weight_low,
            "high": weight_high,
            "cross": weight_cross,
        }
        # P1, P2, P3 of the paper; a disabled term gets no predictor.
        self.predictors = nn.ModuleDict(
            {
                term: Predictor(dim, predictor_hidden)
                for term, used in (
                    ("low", use_low),
                    ("high", use_high),
                    ("cross", use_cross),
                )
                if used
            }
        )

    def forward(
        self,
        student_mid,
        student_final,
        teacher_mid,
        teacher_final,
        phoneme_mask,
        word_mask,
        valid_mask,
    ):
        """Compute the weighted loss and each term.

        Arguments
        ---------
        student_mid : torch.Tensor
            ``(B, T, D)`` output of student layer N/2.
        student_final : torch.Tensor
            ``(B, T, D)`` output of student layer N.
        teacher_mid : torch.Tensor
            ``(B, T, D)`` output of teacher layer M/2.
        teacher_final : torch.Tensor
            ``(B, T, D)`` output of teacher layer M, without the final encoder LayerNorm.
        phoneme_mask : torch.BoolTensor or None
            ``(B, T)`` phoneme-level mask; unused (may be None) with ``objective="distill"``.
        word_mask : torch.BoolTensor or None
            ``(B, T)`` word-level mask; unused (may be None) with ``objective="distill"``.
        valid_mask : torch.BoolTensor
            ``(B, T)`` True on frames made of real samples; padding never enters a term.

        Returns
        -------
        dict of str to torch.Tensor
            Scalars ``loss`` (weighted sum of the enabled terms), ``loss_low``,
            ``loss_high`` and ``loss_cross``; a disabled term reads 0 and has no graph.
        """
        if self.objective == "vesper":
            if phoneme_mask is None or word_mask is None:
                raise ValueError(
                    "The 'vesper' objective needs the phoneme- and word-level masks from "
                    "EnergyGuidedMasker; pass them, or use objective='distill'."
                )
            low_frames = phoneme_mask & valid_mask  # (B, T)
            high_frames = word_mask & valid_mask  # (B, T)
        else:
            low_frames = high_frames = valid_mask  # (B, T)
        inputs_and_targets = {
            "low": (student_mid, teacher_mid, low_frames),
            "high": (student_final, teacher_final, high_frames),
            "cross": (student_final, teacher_mid, valid_mask),
        }
        losses = {}
        total = 0.0
        for term, (inputs, targets, frames) in inputs_and_targets.items():
            if term in self.predictors:
                losses[f"loss_{term}"] = predicted_mse(
                    self.predictors[term], inputs, targets, frames
                )
                total = total + self.weights[term] * losses[f"loss_{term}"]
            else:
                losses[f"loss_{term}"] = student_final.new_zeros(())
        losses["loss"] = total
        return losses
