"""Global mean/variance normalisation of downstream input frames.

SpeechBrain's ``InputNormalization(norm_type="global")`` keeps running statistics of its
input while training the first epoch(s) and then freezes them (they are checkpointed).
It is written for features that carry no gradient; here the input comes out of the
trainable layer combiner, so the statistics are taken from a detached copy (otherwise
every later batch would backpropagate into the graph of the first one).
"""

from speechbrain.processing.features import InputNormalization


class GlobalFrameNormalization(InputNormalization):
    """``InputNormalization(norm_type="global")`` whose statistics never hold a graph.

    Arguments
    ---------
    update_until_epoch : int
        Statistics are updated while ``epoch < update_until_epoch`` (2: the first epoch).

    Example
    -------
    >>> import torch
    >>> norm = GlobalFrameNormalization()
    >>> frames = torch.randn(2, 5, 3, requires_grad=True) * 4 + 1
    >>> out = norm(frames, torch.ones(2), epoch=1)
    >>> out.sum().backward()
    >>> bool(abs(out.mean()) < 1e-5)
    True
    """

    def __init__(self, update_until_epoch=2):
        super().__init__(
            norm_type="global", update_until_epoch=update_until_epoch
        )

    def _update_global_stats(self, x, mask):
        # A NaN would stay in the running statistics for good (and be exported with them).
        if not bool(x.isfinite().all()):
            raise ValueError(
                "Non-finite frames reached the global normalisation: its statistics would become NaN."
            )
        super()._update_global_stats(x.detach(), mask)
