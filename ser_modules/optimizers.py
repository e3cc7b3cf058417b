"""Optimiser choice by name, so that an hparams file switches it with one value.

``opt_class`` of the recipes is a factory ``params -> torch.optim.Optimizer`` (SpeechBrain's
``Brain`` calls it on the trainable parameters). :func:`optimizer_factory` builds that
factory from plain hparams, so ``--optimizer=adamw`` works on the command line where a
``!name:torch.optim.SGD`` tag could not be overridden.
"""

import functools

import torch

OPTIMIZERS = ("sgd", "adamw", "adam")


def optimizer_factory(
    name, lr, momentum=0.9, weight_decay=0.0, betas=(0.9, 0.999)
):
    """A ``params -> Optimizer`` factory.

    Arguments
    ---------
    name : str
        ``"sgd"`` (with ``momentum``; the papers' setups), ``"adamw"`` (decoupled weight
        decay; trains small models from scratch on small corpora without lr tuning) or
        ``"adam"`` (L2 ``weight_decay`` added to the gradient, as torch's Adam does).
    lr : float
        Peak learning rate.
    momentum : float
        SGD momentum (ignored by Adam / AdamW).
    weight_decay : float
        Weight decay.
    betas : tuple of float
        Adam / AdamW betas (ignored by SGD).

    Returns
    -------
    functools.partial
        Call it on the parameters to get the optimiser.
    """
    if name == "sgd":
        return functools.partial(
            torch.optim.SGD, lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    if name == "adamw":
        return functools.partial(
            torch.optim.AdamW,
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
        )
    if name == "adam":
        return functools.partial(
            torch.optim.Adam,
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
        )
    raise ValueError(f"Unknown optimizer {name!r}: use one of {OPTIMIZERS}.")
