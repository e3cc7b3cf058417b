"""The BAS search phase: train the Gumbel-softmax super net, then derive its architecture.

``BASSearchBrain`` trains the super net's block weights and its architecture parameters
theta with cross-entropy (BAS eq. 6). By default both are trained together by one SGD
optimiser on the training data, as in the paper. With ``theta_split: True`` (FBNet's
variant) theta is trained by its own optimiser (Adam) on a held-out share of the training
data, one theta step after every weight step. The Gumbel-softmax temperature follows
FBNet's schedule, ``tau_e = tau_0 * exp(-decay * (e - 1))``, set at the start of each epoch
from the epoch number, so a resumed search continues with the right temperature.

After the last epoch :func:`run_search_phase` derives the architecture (argmax theta per
layer), saves it with softmax(theta) as ``architecture.json`` and draws the heatmap PNG.
"""

import logging
import os

import speechbrain as sb
import torch

from ser_modules.downstream import (
    architecture_probabilities,
    derive_architecture,
    fbnet_temperature,
    load_architecture,
    plot_theta_heatmap,
    save_architecture,
)
from ser_modules.training import EmotionBrain, loader_generator, unwrap_module

logger = logging.getLogger(__name__)

ARCHITECTURE_FILE = "architecture.json"
HEATMAP_FILE = "theta_heatmap.png"


class BASSearchBrain(EmotionBrain):
    """Searches the downstream architecture (``modules.downstream`` is a ``BASSuperNet``).

    Extra hparams: ``initial_temperature``, ``temperature_decay``, ``theta_split``,
    ``theta_opt_class`` (used when ``theta_split``), and ``theta_set`` (the held-out data,
    passed as the ``theta_set`` attribute before ``fit``).
    """

    theta_set = None

    @property
    def supernet(self):
        """The ``BASSuperNet`` itself, also when DDP wraps it (multi-process training)."""
        return unwrap_module(self.modules.downstream)

    def init_optimizers(self):
        """Joint SGD on weights and theta (paper), or separate optimisers (FBNet)."""
        supernet = self.supernet
        if not self.hparams.theta_split:
            super().init_optimizers()
            return
        thetas = {id(p) for p in supernet.architecture_parameters()}
        weights = [p for p in self.modules.parameters() if p.requires_grad and id(p) not in thetas]
        self.optimizer = self.opt_class(weights)
        self.theta_optimizer = self.hparams.theta_opt_class(supernet.architecture_parameters())
        self.optimizers_dict = {"opt_class": self.optimizer, "theta_opt_class": self.theta_optimizer}
        self.lr_scheduler = self.hparams.lr_scheduler(self.optimizer)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable("theta_optimizer", self.theta_optimizer)
            self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_stage_start(self, stage, epoch=None):
        """Anneal the temperature; in FBNet mode, position the held-out theta batches."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            return
        temperature = fbnet_temperature(
            epoch, self.hparams.initial_temperature, self.hparams.temperature_decay
        )
        self.supernet.set_temperature(temperature)
        if self.hparams.theta_split:
            # A fresh, epoch-seeded order; after an intra-epoch recovery skip the batches
            # already used (one per weight step), so the theta updates replay exactly.
            sampler = sb.dataio.sampler.ReproducibleRandomSampler(
                self.theta_set, seed=int(self.hparams.seed), epoch=int(epoch)
            )
            loader = sb.dataio.dataloader.make_dataloader(
                self.theta_set, sampler=sampler, generator=loader_generator(self.hparams.seed),
                **self.hparams.theta_dataloader_opts,
            )
            self.theta_batches = self._cycle(loader, skip=self.step)

    @staticmethod
    def _cycle(loader, skip=0):
        count = 0
        while True:
            for batch in loader:
                if count >= skip:
                    yield batch
                count += 1

    def fit_batch(self, batch):
        """A weight step (and, with ``theta_split``, a theta step on a held-out batch)."""
        loss = super().fit_batch(batch)
        if self.hparams.theta_split:
            theta_batch = next(self.theta_batches)
            with self.training_ctx:
                predictions = self.compute_forward(theta_batch, sb.Stage.TRAIN)
                theta_loss = self.compute_objectives(predictions, theta_batch, sb.Stage.TRAIN)
            self.theta_optimizer.zero_grad(set_to_none=True)
            theta_loss.backward()
            self.theta_optimizer.step()
            # The weight optimiser must not see gradients of the theta step.
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Also log the temperature and softmax(theta) of each layer."""
        if stage == sb.Stage.VALID:
            supernet = self.supernet
            probabilities = architecture_probabilities(supernet)
            table = "; ".join(
                f"L{index + 1} " + " ".join(
                    f"{name}={value:.3f}" for name, value in zip(supernet.candidates, row.tolist())
                )
                for index, row in enumerate(probabilities)
            )
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "temperature": float(supernet.temperature), "softmax(theta)": table}
            )
        super().on_stage_end(stage, stage_loss, epoch)


def theta_split_datasets(train_set, fraction, seed):
    """Split the training data into a weight part and a held-out theta part (seeded)."""
    ids = sorted(train_set.data_ids)
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(ids), generator=generator).tolist()
    count = max(1, int(round(fraction * len(ids))))
    theta_ids = {ids[i] for i in order[:count]}
    if count >= len(ids):
        raise ValueError(f"theta_fraction={fraction} leaves no training data for the weights.")
    weight_part = train_set.filtered(key_test={"id": lambda x: x not in theta_ids})
    theta_part = train_set.filtered(key_test={"id": lambda x: x in theta_ids})
    return weight_part, theta_part


def run_search_phase(hparams, run_opts, datasets, modules):
    """Search (or reload) the architecture of one split.

    Returns
    -------
    dict
        ``architecture`` (list of block names), ``probabilities`` (L x K softmax(theta)),
        ``candidates``, ``ties`` (layers whose argmax was a tie), and the file paths.
    """
    search_folder = hparams["search_folder"]
    architecture_path = os.path.join(search_folder, ARCHITECTURE_FILE)
    heatmap_path = os.path.join(search_folder, HEATMAP_FILE)
    if os.path.isfile(architecture_path):
        logger.info("Search already finished: reusing %s", architecture_path)
        found = load_architecture(architecture_path)
        return {**found, "architecture_file": architecture_path, "heatmap": heatmap_path}

    search_modules = {**modules, "layer_combiner": hparams["search_layer_combiner"], "downstream": hparams["supernet"]}
    if "search_input_norm" in hparams:
        search_modules["input_norm"] = hparams["search_input_norm"]
    brain = BASSearchBrain(
        modules=search_modules,
        opt_class=hparams["search_opt_class"],
        hparams={**hparams, "lr_scheduler": hparams["search_lr_scheduler"],
                 "epoch_counter": hparams["search_epoch_counter"],
                 "train_logger": hparams["search_logger"]},
        run_opts=run_opts,
        checkpointer=hparams["search_checkpointer"],
    )
    train_set = datasets["train"]
    if hparams["theta_split"]:
        train_set, brain.theta_set = theta_split_datasets(train_set, hparams["theta_fraction"], hparams["seed"])
    brain.fit(
        hparams["search_epoch_counter"],
        train_set=train_set,
        valid_set=datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["test_dataloader_opts"],
    )
    supernet = brain.supernet
    architecture, ties = derive_architecture(supernet)
    probabilities = architecture_probabilities(supernet)
    if ties:
        logger.warning(
            "theta tied in layers %s: took the first candidate in the order %s.",
            [t + 1 for t in ties], list(supernet.candidates),
        )
    logger.info("Derived architecture: %s", " -> ".join(architecture))
    if sb.utils.distributed.if_main_process():
        # architecture.json marks the phase as done, so it is written last: a run killed
        # while drawing the heatmap searches (recovers) again instead of missing the PNG.
        plot_theta_heatmap(
            probabilities, supernet.candidates, heatmap_path,
            title=f"BAS softmax(theta), {hparams['split_name']}",
        )
        save_architecture(architecture_path, architecture, probabilities, supernet.candidates, ties)
    sb.utils.distributed.ddp_barrier()
    found = load_architecture(architecture_path)
    return {**found, "architecture_file": architecture_path, "heatmap": heatmap_path}
