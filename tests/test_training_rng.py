"""Resumed runs replay the random numbers of uninterrupted ones.

A run recovered inside an epoch restores the global RNG (``RandomState``) and only then
creates the epoch's DataLoader iterator, which the uninterrupted run had created before
the checkpoint. Our Brains give every loader its own generator, so creating an iterator
leaves the global RNG (dropout masks, Gumbel noise, Vesper masks) untouched.
"""

import pytest
import speechbrain as sb
import torch

from ser_modules.resume import loader_generator
from ser_modules.training import EmotionBrain
from ser_modules.vesper.pretraining import VesperPretrainBrain


def test_a_plain_dataloader_iterator_consumes_the_global_rng():
    """The hazard itself: without a generator, iter() draws from the global RNG."""
    state = torch.get_rng_state()
    iter(torch.utils.data.DataLoader(list(range(8)), batch_size=2))
    assert not torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("brain_class", [EmotionBrain, VesperPretrainBrain])
@pytest.mark.parametrize(
    "stage", [sb.Stage.TRAIN, sb.Stage.VALID, sb.Stage.TEST]
)
def test_brain_dataloaders_leave_the_global_rng_alone(
    brain_class, stage, tmp_path
):
    # The Brains' own arguments (not used by their dataloaders).
    own_arguments = {
        EmotionBrain: {"lr_scheduler": None, "train_logger": None},
        VesperPretrainBrain: {
            "masker": None,
            "lr_schedule": None,
            "train_logger": None,
        },
    }[brain_class]
    brain = brain_class(
        modules={},
        hparams={"seed": 7},
        run_opts={"device": "cpu"},
        **own_arguments,
    )
    loader = brain.make_dataloader(
        list(range(8)),
        stage,
        ckpt_prefix=None,
        batch_size=2,
        shuffle=stage == sb.Stage.TRAIN,
    )
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    batches = [batch.tolist() for batch in loader]
    assert torch.equal(torch.rand(4), expected)
    assert sorted(value for batch in batches for value in batch) == list(
        range(8)
    )


def test_loader_generators_are_seeded_per_stage():
    def draw(generator):
        return torch.randint(1 << 30, (3,), generator=generator).tolist()

    assert draw(loader_generator(5, sb.Stage.TRAIN)) == draw(
        loader_generator(5, sb.Stage.TRAIN)
    )
    assert draw(loader_generator(5, sb.Stage.TRAIN)) != draw(
        loader_generator(5, sb.Stage.VALID)
    )
    assert draw(loader_generator(5, sb.Stage.TRAIN)) != draw(
        loader_generator(6, sb.Stage.TRAIN)
    )
