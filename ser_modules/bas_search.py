"""The BAS search phase: train the Gumbel-softmax super net, then derive its architecture.

``BASSearchBrain`` trains the super net's block weights and its architecture parameters
theta with cross-entropy (BAS eq. 6). How theta is optimised is the hparam ``search_mode``:

``decisive`` (default)
    theta has its own optimiser (``theta_opt_class``: Adam, ``theta_lr``, no weight decay)
    and takes one step on every training batch, from the gradient of the same forward pass
    as the weights; the Gumbel-softmax temperature is annealed geometrically from
    ``initial_temperature`` to ``final_temperature`` over the search's epochs
    (:func:`annealed_temperature`), whatever their number.
``paper``
    The literal reading of the BAS paper: theta is one more parameter of the weights' SGD
    (``search_lr``, momentum, weight decay); FBNet's per-epoch temperature decay
    ``tau_e = initial_temperature * exp(-temperature_decay * (e - 1))``.
    With ``theta_held_out: True`` theta steps instead on a held-out share of the
    training data, as in ``fbnet`` (see there).
``fbnet``
    FBNet's variant: theta with ``theta_opt_class`` on a held-out share
    (``theta_fraction``) of the training data, one theta step after every weight step;
    FBNet's temperature decay.

Why the default differs from the paper (measured; see the README's BAS section): with
theta in the weights' SGD its gradient through the Gumbel-softmax is tiny (a factor
``1 / tau`` and the near-uniform mixing weights), so ``lr * grad`` moves softmax(theta) by
a few thousandths over a whole search and the derived architecture is decided by noise.
Adam normalises theta's step to about ``theta_lr`` whatever the gradient's scale.

``theta_warmup_epochs`` (default 0; ``decisive`` and ``fbnet``) trains the weights alone for
that many first epochs, at ``initial_temperature``, before theta takes any step, as the
common FBNet implementations do (``train_thetas_from_the_epoch``): every block is trained
before theta compares them. The temperature schedule then runs over the remaining epochs.

The temperature is set at the start of each epoch from the epoch number, so a resumed
search continues with the right temperature. Every epoch the search log gets the
temperature, softmax(theta) and the mean L2 norm of theta's gradient per layer, and
``theta_trajectory.csv`` / ``.md`` in the search folder get one row per layer.

After the last epoch :func:`search_architecture` derives the architecture (argmax theta per
layer), saves it with softmax(theta) as ``architecture.json`` and draws the heatmap PNG
(final probabilities and their trajectory over the epochs).
"""

import contextlib
import copy
import csv
import io
import logging
import math
import os
import shutil

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
from ser_modules.manifest import atomic_write_text
from ser_modules.resume import (
    loader_generator,
    own_random_streams,
    unwrap_module,
)
from ser_modules.training import EmotionBrain

logger = logging.getLogger(__name__)

ARCHITECTURE_FILE = "architecture.json"
HEATMAP_FILE = "theta_heatmap.png"
TRAJECTORY_FILE = "theta_trajectory.csv"
TRAJECTORY_MARKDOWN = "theta_trajectory.md"
RESTARTS_MARKDOWN = "restarts.md"
SEARCH_MODES = ("decisive", "paper", "fbnet")


def annealed_temperature(epoch, num_epochs, initial=5.0, final=0.1):
    """Gumbel-softmax temperature annealed geometrically from ``initial`` to ``final``.

    ``tau_e = initial * (final / initial) ** ((e - 1) / (E - 1))``: epoch 1 runs at
    ``initial``, the last epoch ``E`` at ``final``, whatever ``E`` is (a 20-epoch search
    ends as cold as a 100-epoch one).

    Arguments
    ---------
    epoch : int
        Epoch number, 1-based.
    num_epochs : int
        E, the number of search epochs.
    initial, final : float
        Temperatures of the first and last epoch (> 0).

    Returns
    -------
    float
    """
    if epoch < 1:
        raise ValueError(f"Epochs are counted from 1, got epoch={epoch}.")
    if not (initial > 0 and final > 0):
        raise ValueError(
            f"Temperatures must be > 0, got initial={initial}, final={final}."
        )
    if num_epochs <= 1:
        return float(final)
    progress = min(epoch - 1, num_epochs - 1) / (num_epochs - 1)
    return float(initial * (final / initial) ** progress)


def search_temperature(hparams, epoch):
    """The temperature of a search epoch under the hparams' ``search_mode``.

    During the ``theta_warmup_epochs`` first epochs it is ``initial_temperature``; the
    schedule then starts, counting epochs from the first one in which theta steps.
    """
    mode = search_mode_of(hparams)
    warmup = theta_warmup_of(hparams)
    theta_epoch = max(1, epoch - warmup)
    if mode == "decisive":
        return annealed_temperature(
            theta_epoch,
            int(hparams["search_epochs"]) - warmup,
            hparams["initial_temperature"],
            hparams["final_temperature"],
        )
    return fbnet_temperature(
        theta_epoch,
        hparams["initial_temperature"],
        hparams["temperature_decay"],
    )


def theta_warmup_of(hparams):
    """``theta_warmup_epochs`` of the hparams (a dict), 0 when absent."""
    return int(hparams.get("theta_warmup_epochs", 0) or 0)


def check_theta_warmup(search_mode, search_epochs, theta_warmup_epochs):
    """Refuse a warm-up that cannot run: negative, the whole search, or in ``paper`` mode
    (there theta is one more parameter of the weights' SGD, which has no warm-up)."""
    warmup = int(theta_warmup_epochs)
    if warmup == 0:
        return
    if search_mode == "paper":
        raise ValueError(
            f"theta_warmup_epochs={warmup} needs theta's own optimiser: the paper's search "
            "steps theta in the weights' SGD. Use --search_mode=decisive (or fbnet), or "
            "--theta_warmup_epochs=0."
        )
    if not 0 < warmup < int(search_epochs):
        raise ValueError(
            f"theta_warmup_epochs={warmup} must be >= 0 and below search_epochs="
            f"{search_epochs}: theta needs at least one epoch to step."
        )


def theta_on_held_out(hparams):
    """Whether theta steps on a held-out share of the training data (``fbnet`` mode, or
    ``decisive`` with ``theta_held_out: True``) rather than on the weights' batches."""
    held_out = (
        hparams.get("theta_held_out", False)
        if isinstance(hparams, dict)
        else getattr(hparams, "theta_held_out", False)
    )
    mode = search_mode_of(hparams)
    return mode == "fbnet" or (mode == "decisive" and bool(held_out))


def search_mode_of(hparams):
    """``search_mode`` of the hparams, checked (``decisive`` when absent)."""
    mode = (
        hparams.get("search_mode", "decisive")
        if isinstance(hparams, dict)
        else getattr(hparams, "search_mode", "decisive")
    )
    if mode not in SEARCH_MODES:
        raise ValueError(f"search_mode={mode!r} is not one of {SEARCH_MODES}.")
    return mode


class BASSearchBrain(EmotionBrain):
    """Searches the downstream architecture (``modules.downstream`` is a ``BASSuperNet``).

    Extra hparams: ``search_mode`` (see the module docstring), ``search_epochs``,
    ``initial_temperature``, ``final_temperature``, ``temperature_decay``,
    ``theta_opt_class`` (not used by ``paper``), ``search_folder`` (for the theta
    trajectory) and, for ``fbnet``, ``theta_set`` (the held-out data, passed as the
    ``theta_set`` attribute before ``fit``).
    """

    theta_set = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mode = search_mode_of(self.hparams.__dict__)
        self.held_out = theta_on_held_out(self.hparams.__dict__)
        self.theta_warmup_epochs = theta_warmup_of(self.hparams.__dict__)
        self.theta_steps = True  # False during the warm-up epochs
        self._theta_grad_sums = None
        self._theta_grad_steps = 0
        self._count_theta_grads = True
        self._hooked = False

    def _hook_theta_gradients(self):
        """Sum the L2 norm of every theta gradient that updates theta (for the log)."""
        if self._hooked:
            return
        self._hooked = True
        for index, theta in enumerate(self.supernet.architecture_parameters()):
            theta.register_hook(
                lambda grad, index=index: self._record_theta_grad(index, grad)
            )

    def _record_theta_grad(self, index, grad):
        if self._count_theta_grads and self._theta_grad_sums is not None:
            self._theta_grad_sums[index] += float(grad.detach().norm())
            if index == 0:
                self._theta_grad_steps += 1
        return grad

    @property
    def supernet(self):
        """The ``BASSuperNet`` itself, also when DDP wraps it (multi-process training)."""
        return unwrap_module(self.modules.downstream)

    def init_optimizers(self):
        """Joint SGD on weights and theta (paper), or a separate theta optimiser."""
        supernet = self.supernet
        self._hook_theta_gradients()
        if self.mode == "paper":
            super().init_optimizers()
            return
        thetas = {id(p) for p in supernet.architecture_parameters()}
        weights = [
            p
            for p in self.modules.parameters()
            if p.requires_grad and id(p) not in thetas
        ]
        self.optimizer = self.opt_class(weights)
        self.theta_optimizer = self.hparams.theta_opt_class(
            supernet.architecture_parameters()
        )
        self.optimizers_dict = {
            "opt_class": self.optimizer,
            "theta_opt_class": self.theta_optimizer,
        }
        self.lr_scheduler = self.scheduler_class(self.optimizer)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable(
                "theta_optimizer", self.theta_optimizer
            )
            self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_stage_start(self, stage, epoch=None):
        """Anneal the temperature; in FBNet mode, position the held-out theta batches."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            return
        self._theta_grad_sums = [0.0] * self.supernet.num_layers
        self._theta_grad_steps = 0
        self.theta_steps = epoch is None or epoch > self.theta_warmup_epochs
        self.supernet.set_temperature(
            search_temperature(self.hparams.__dict__, epoch)
        )
        if self.held_out and self.theta_steps:
            # A fresh, epoch-seeded order; after an intra-epoch recovery skip the batches
            # already used (one per weight step), so the theta updates replay exactly.
            sampler = sb.dataio.sampler.ReproducibleRandomSampler(
                self.theta_set, seed=int(self.hparams.seed), epoch=int(epoch)
            )
            loader = sb.dataio.dataloader.make_dataloader(
                self.theta_set,
                sampler=sampler,
                generator=loader_generator(self.hparams.seed),
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

    def freeze_optimizers(self, optimizers):
        """The optimisers SpeechBrain's weight step runs: not theta's when theta steps on
        its own held-out batch (see :meth:`fit_batch`) or during the warm-up epochs."""
        if self.held_out or not self.theta_steps:
            return {
                name: opt
                for name, opt in optimizers.items()
                if name != "theta_opt_class"
            }
        return optimizers

    def fit_batch(self, batch):
        """A weight step and a theta step.

        ``decisive``: both optimisers step from the gradients of one forward/backward pass
        on the batch. ``paper``: theta is in the weights' SGD. ``fbnet``: after the weight
        step, theta steps on the next held-out batch. During the warm-up epochs only the
        weights step.
        """
        self._count_theta_grads = self.theta_steps and not self.held_out
        loss = super().fit_batch(batch)
        self._count_theta_grads = True
        if not self.theta_steps:
            # The weights' backward also reached theta: drop it, or theta's first step
            # after the warm-up would apply the sum of the warm-up's gradients.
            self.theta_optimizer.zero_grad(set_to_none=True)
        if self.held_out and self.theta_steps:
            theta_batch = next(self.theta_batches)
            with self.training_ctx:
                predictions = self.compute_forward(theta_batch, sb.Stage.TRAIN)
                theta_loss = self.compute_objectives(
                    predictions, theta_batch, sb.Stage.TRAIN
                )
            self.theta_optimizer.zero_grad(set_to_none=True)
            theta_loss.backward()
            self.theta_optimizer.step()
            # The weight optimiser must not see gradients of the theta step.
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Also log the temperature, softmax(theta) and theta's gradient norm per layer."""
        if stage == sb.Stage.VALID:
            supernet = self.supernet
            probabilities = architecture_probabilities(supernet)
            grad_norms = self.epoch_theta_grad_norms()
            table = "; ".join(
                f"L{index + 1} "
                + " ".join(
                    f"{name}={value:.3f}"
                    for name, value in zip(supernet.candidates, row.tolist())
                )
                for index, row in enumerate(probabilities)
            )
            self.train_logger.log_stats(
                stats_meta={
                    "epoch": epoch,
                    "temperature": float(supernet.temperature),
                    "softmax(theta)": table,
                    "|grad theta|": " ".join(
                        _grad_cell(value) for value in grad_norms
                    ),
                }
            )
            if sb.utils.distributed.if_main_process() and getattr(
                self.hparams, "search_folder", None
            ):
                append_trajectory(
                    self.hparams.search_folder,
                    epoch,
                    float(supernet.temperature),
                    supernet.candidates,
                    supernet.architecture_logits(),
                    grad_norms,
                )
        super().on_stage_end(stage, stage_loss, epoch)

    def epoch_theta_grad_norms(self):
        """Mean L2 norm of theta's gradient per layer over this epoch's theta updates
        (NaN in an epoch without any: the warm-up)."""
        if not self._theta_grad_sums or self._theta_grad_steps == 0:
            return [float("nan")] * self.supernet.num_layers
        return [
            total / self._theta_grad_steps for total in self._theta_grad_sums
        ]


TRAJECTORY_COLUMNS = (
    "epoch",
    "temperature",
    "layer",
    "candidate",
    "theta",
    "probability",
    "grad_norm",
)


def append_trajectory(
    search_folder, epoch, temperature, candidates, theta, grad_norms
):
    """Add one epoch's rows to ``theta_trajectory.csv`` and rewrite ``theta_trajectory.md``.

    Rows of this epoch or later already in the file (left by a run that was killed and
    resumed from an earlier checkpoint) are replaced, so every epoch appears once.

    Arguments
    ---------
    search_folder : str
        The search folder of the split.
    epoch : int
        The epoch just finished.
    temperature : float
        Its Gumbel-softmax temperature.
    candidates : sequence of str
        Column order of theta.
    theta : torch.Tensor
        ``(L, K)`` architecture parameters after the epoch.
    grad_norms : list of float
        Mean L2 norm of theta's gradient per layer during the epoch.
    """
    path = os.path.join(search_folder, TRAJECTORY_FILE)
    rows = [
        row
        for row in read_trajectory_rows(path)
        if int(row["epoch"]) < int(epoch)
    ]
    probabilities = torch.softmax(theta.float(), dim=1)
    for layer in range(theta.shape[0]):
        for column, name in enumerate(candidates):
            rows.append(
                {
                    "epoch": int(epoch),
                    "temperature": f"{temperature:.6g}",
                    "layer": layer + 1,
                    "candidate": name,
                    "theta": f"{float(theta[layer, column]):.6g}",
                    "probability": f"{float(probabilities[layer, column]):.6f}",
                    "grad_norm": f"{grad_norms[layer]:.6g}",
                }
            )
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=TRAJECTORY_COLUMNS, lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    os.makedirs(search_folder, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    atomic_write_text(
        os.path.join(search_folder, TRAJECTORY_MARKDOWN),
        trajectory_markdown(rows, candidates),
    )


def read_trajectory_rows(path):
    """The rows of a ``theta_trajectory.csv`` (empty when there is none)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def trajectory_array(rows, candidates):
    """``(epochs, (E, L, K) probabilities, (E,) temperatures)`` from trajectory rows."""
    epochs = sorted({int(row["epoch"]) for row in rows})
    layers = sorted({int(row["layer"]) for row in rows})
    values = torch.zeros(
        len(epochs), len(layers), len(candidates), dtype=torch.float64
    )
    temperatures = torch.zeros(len(epochs), dtype=torch.float64)
    for row in rows:
        e = epochs.index(int(row["epoch"]))
        values[
            e, int(row["layer"]) - 1, list(candidates).index(row["candidate"])
        ] = float(row["probability"])
        temperatures[e] = float(row["temperature"])
    return epochs, values, temperatures


def _grad_cell(value):
    """A gradient norm of the trajectory table; ``-`` for an epoch without theta steps."""
    value = float(value)
    return "-" if math.isnan(value) else f"{value:.2e}"


def trajectory_markdown(rows, candidates):
    """One line per epoch: temperature, then softmax(theta) and |grad| of each layer."""
    epochs = sorted({int(row["epoch"]) for row in rows})
    layers = sorted({int(row["layer"]) for row in rows})
    by_key = {
        (int(r["epoch"]), int(r["layer"]), r["candidate"]): r for r in rows
    }
    header = ["epoch", "tau"]
    for layer in layers:
        header += [f"L{layer} {name}" for name in candidates] + [
            f"L{layer} max",
            f"L{layer} grad",
        ]
    lines = [
        "# softmax(theta) per search epoch",
        "",
        "`grad` is the mean L2 norm of the layer's theta gradient over the epoch's theta "
        "updates (`-`: none, a warm-up epoch).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for epoch in epochs:
        first = by_key[(epoch, layers[0], candidates[0])]
        cells = [str(epoch), f"{float(first['temperature']):.3f}"]
        for layer in layers:
            values = [
                float(by_key[(epoch, layer, name)]["probability"])
                for name in candidates
            ]
            cells += [f"{v:.3f}" for v in values] + [
                f"{max(values):.3f}",
                _grad_cell(by_key[(epoch, layer, candidates[0])]["grad_norm"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


THETA_SPLITS = ("clips", "speakers", "valid")


def theta_split_datasets(
    train_set, fraction, seed, by="clips", speaker_key="spk_id", label_key="emo"
):
    """Split the training data into a weight part and a held-out theta part (seeded).

    ``by="clips"`` (FBNet's split) draws a random ``fraction`` of the clips, so theta sees
    the weights' own speakers. ``by="speakers"`` holds out whole training speakers
    (:func:`ser_modules.splits.draw_speaker_validation`: about ``fraction`` of the clips,
    as label-stratified as the speakers allow), so theta is stepped on how well the
    blocks carry over to speakers the weights never saw, as the speaker-independent
    evaluation asks. It reads each clip's speaker from the manifest column
    ``speaker_key`` and stratifies by ``label_key`` (without it, only less balanced).
    ``by="valid"`` is not a split of the training data (:func:`_search_once` gives theta
    the validation set).
    """
    ids = sorted(train_set.data_ids)
    if by == "speakers":
        from ser_modules.splits import draw_speaker_validation

        missing = [i for i in ids if speaker_key not in train_set.data[i]]
        if missing:
            raise ValueError(
                f"theta_split=speakers needs the speaker of every training clip, but "
                f"{len(missing)} clips (e.g. {missing[0]!r}) have no {speaker_key!r} "
                "column in the training manifest: re-run the data preparation (it writes "
                "spk_id) or use --theta_split=clips."
            )
        speakers = [str(train_set.data[i][speaker_key]) for i in ids]
        if len(set(speakers)) < 2:
            raise ValueError(
                "theta_split=speakers needs at least 2 training speakers (found "
                f"{len(set(speakers))}); use --theta_split=clips."
            )
        labels = [str(train_set.data[i].get(label_key, "")) for i in ids]
        _, theta_positions = draw_speaker_validation(
            range(len(ids)), labels, speakers, fraction, int(seed)
        )
        theta_ids = {ids[i] for i in theta_positions}
    elif by == "clips":
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(ids), generator=generator).tolist()
        count = max(1, int(round(fraction * len(ids))))
        if count >= len(ids):
            raise ValueError(
                f"theta_fraction={fraction} leaves no training data for the weights."
            )
        theta_ids = {ids[i] for i in order[:count]}
    else:
        raise ValueError(
            f"Unknown theta_split {by!r} for a split of the training data: use 'clips' "
            "(FBNet's random share) or 'speakers' (whole training speakers held out)."
        )
    weight_part = train_set.filtered_sorted(
        key_test={"id": lambda x: x not in theta_ids}
    )
    theta_part = train_set.filtered_sorted(
        key_test={"id": lambda x: x in theta_ids}
    )
    return weight_part, theta_part


def search_architecture(
    datasets,
    run_opts,
    frozen_modules,
    *,
    search_folder,
    supernet,
    layer_combiner,
    opt_class,
    theta_opt_class,
    lr_scheduler,
    epoch_counter,
    search_logger,
    checkpointer,
    search_mode,
    search_epochs,
    initial_temperature,
    final_temperature,
    temperature_decay,
    theta_fraction,
    theta_held_out,
    theta_dataloader_opts,
    train_dataloader_opts,
    valid_dataloader_opts,
    seed,
    split_name,
    num_classes,
    selection_metric,
    input_norm=None,
    restarts=1,
    theta_split="clips",
    theta_warmup_epochs=0,
):
    """Search (or reload) the architecture of one split.

    The BAS hparams files wire every argument but the first three (``block_search:
    !name:ser_modules.bas_search.search_architecture``), so a recipe calls
    ``hparams["block_search"](datasets, run_opts, frozen_modules)``.

    Arguments
    ---------
    datasets : dict
        ``{"train": ..., "valid": ...}`` datasets of the split.
    run_opts : dict
        SpeechBrain's run options.
    frozen_modules : dict
        Modules that are not trained (the upstream when features are not cached).
    search_folder : str
        Where ``architecture.json``, the heatmap and the theta trajectory are written.
    supernet, layer_combiner, input_norm : torch.nn.Module
        The super net (``BASSuperNet``) and the modules before it (``input_norm`` optional).
    opt_class, theta_opt_class, lr_scheduler : callable
        Factories of the weights' optimiser, theta's optimiser and the weights' scheduler.
    epoch_counter, search_logger, checkpointer
        The search's own epoch counter, log and checkpointer (in ``search_folder``).
    search_mode : str
        ``decisive``, ``paper`` or ``fbnet`` (see the module docstring).
    search_epochs : int
        Number of search epochs (sets the temperature schedule of ``decisive``).
    initial_temperature, final_temperature, temperature_decay : float
        The Gumbel-softmax temperature schedule.
    theta_fraction : float
        ``fbnet`` (and ``decisive`` with ``theta_held_out``): held-out share of the
        training data for theta.
    theta_held_out : bool
        ``decisive``: step theta on the held-out ``theta_fraction`` (as ``fbnet`` does)
        instead of the weights' batches.
    theta_split : str
        What theta steps on when it is held out: ``clips`` (default, FBNet's random
        ``theta_fraction`` of the training clips), ``speakers`` (whole training speakers,
        from the manifests' ``spk_id``; :func:`theta_split_datasets`) or ``valid`` (the
        validation set itself, which then also selects the search's checkpoint: its
        scores are no longer an unbiased estimate; the test set is never used).
    theta_warmup_epochs : int
        First search epochs in which only the weights step (at ``initial_temperature``);
        the temperature schedule runs over the rest. 0 (default): theta steps from the
        first batch. Refused in ``paper`` mode.
    theta_dataloader_opts, train_dataloader_opts, valid_dataloader_opts : dict
        Loader options of the theta batches, the training and the validation data.
    seed : int
        Seed of the search's random streams (Gumbel noise, dropout, the held-out draw,
        the loaders), which :func:`ser_modules.resume.own_random_streams` keeps apart
        from the recipe's; the hparams build the super net from it (``init_seed``).
    split_name : str
        Name of the split (heatmap title).
    num_classes : int
        Number of labels (validation scores).
    selection_metric : str
        Metric of the search's checkpoint selection (``WA``, ``UA`` or ``WF1``), and of
        the choice between restarts.
    input_norm : torch.nn.Module or None
        Normalisation before the layer combiner (optional).
    restarts : int
        Number of searches, restart k from seed + k - 1 (the super net re-drawn from it)
        in ``<search_folder>/restart<k>``; the one whose last epoch scores best on the
        validation set is the result (``restarts.md`` lists them all). 1 (default): one
        search, in ``search_folder`` itself.

    Returns
    -------
    dict
        ``architecture`` (list of block names), ``probabilities`` (L x K softmax(theta)),
        ``candidates``, ``ties`` (layers whose argmax was a tie), and the file paths.
    """
    brain_hparams = {
        "search_mode": search_mode,
        "search_epochs": search_epochs,
        "initial_temperature": initial_temperature,
        "final_temperature": final_temperature,
        "temperature_decay": temperature_decay,
        "theta_held_out": theta_held_out,
        "theta_warmup_epochs": int(theta_warmup_epochs),
        "theta_opt_class": theta_opt_class,
        "theta_dataloader_opts": theta_dataloader_opts,
        "search_folder": search_folder,
        "epoch_counter": epoch_counter,
        "seed": seed,
        "num_classes": num_classes,
        "selection_metric": selection_metric,
    }
    search_mode_of(brain_hparams)  # an unknown mode is refused before any work
    check_theta_warmup(search_mode, search_epochs, theta_warmup_epochs)
    if theta_split not in THETA_SPLITS:
        raise ValueError(
            f"Unknown theta_split {theta_split!r}: use one of {', '.join(THETA_SPLITS)}."
        )
    if theta_split != "clips" and not theta_on_held_out(brain_hparams):
        # Otherwise the option would be silently ignored: theta steps on the weights' batches.
        raise ValueError(
            f"theta_split={theta_split} only applies when theta steps on held-out data: "
            f"add --theta_held_out=True (search_mode={search_mode!r}) or use "
            "--search_mode=fbnet."
        )
    architecture_path = os.path.join(search_folder, ARCHITECTURE_FILE)
    heatmap_path = os.path.join(search_folder, HEATMAP_FILE)
    if os.path.isfile(architecture_path):
        logger.info("Search already finished: reusing %s", architecture_path)
        found = load_architecture(architecture_path)
        return {
            **found,
            "architecture_file": architecture_path,
            "heatmap": heatmap_path,
        }

    restarts = int(restarts)
    if restarts < 1:
        raise ValueError(f"search_restarts must be >= 1, got {restarts}.")
    shared = {  # what every restart's search shares
        "brain_hparams": brain_hparams,
        "opt_class": opt_class,
        "lr_scheduler": lr_scheduler,
        "theta_fraction": theta_fraction,
        "theta_split": theta_split,
        "train_dataloader_opts": train_dataloader_opts,
        "valid_dataloader_opts": valid_dataloader_opts,
        "selection_metric": selection_metric,
    }
    if restarts == 1:
        # One search: the wired objects themselves, in search_folder (its layout as ever).
        found = _search_once(
            datasets,
            run_opts,
            frozen_modules,
            folder=search_folder,
            seed=int(seed),
            modules={
                "layer_combiner": layer_combiner,
                "input_norm": input_norm,
                "downstream": supernet,
            },
            checkpointer=checkpointer,
            epoch_counter=epoch_counter,
            search_logger=search_logger,
            split_name=split_name,
            **shared,
        )
        return {**found, "architecture_file": architecture_path}

    # Several searches from other starting weights: restart k (1-based) runs in
    # <search_folder>/restart<k> with seed + k - 1, from a copy of the modules as they
    # were built (the super net re-drawn from that seed), with its own epoch counter,
    # log and checkpoints, so a killed run resumes inside the restart it was in.
    pristine = {
        "layer_combiner": layer_combiner,
        "input_norm": input_norm,
        "downstream": supernet,
    }
    records = []
    for index in range(restarts):
        restart_seed = int(seed) + index
        folder = os.path.join(search_folder, f"restart{index + 1}")
        modules = {
            name: None if module is None else copy.deepcopy(module)
            for name, module in pristine.items()
        }
        modules["downstream"].reinitialise(restart_seed)
        counter = type(epoch_counter)(epoch_counter.limit)
        replacements = {id(epoch_counter): counter}
        for name, module in pristine.items():
            if module is not None:
                replacements[id(module)] = modules[name]
        restart_checkpointer = sb.utils.checkpoints.Checkpointer(
            os.path.join(folder, "save"),
            recoverables={
                name: replacements.get(id(obj), obj)
                for name, obj in checkpointer.recoverables.items()
            },
        )
        records.append(
            _search_once(
                datasets,
                run_opts,
                frozen_modules,
                folder=folder,
                seed=restart_seed,
                modules=modules,
                checkpointer=restart_checkpointer,
                epoch_counter=counter,
                search_logger=sb.utils.train_logger.FileTrainLogger(
                    os.path.join(folder, "search_log.txt")
                ),
                split_name=f"{split_name}, restart {index + 1}",
                **shared,
            )
        )
    chosen = choose_restart(records, selection_metric)
    if sb.utils.distributed.if_main_process():
        write_restarts(search_folder, records, chosen, selection_metric)
        # The wired checkpointer created <search_folder>/save; restarts never use it.
        with contextlib.suppress(OSError):
            os.rmdir(checkpointer.checkpoints_dir)
    sb.utils.distributed.ddp_barrier()
    found = load_architecture(architecture_path)
    return {
        **found,
        "architecture_file": architecture_path,
        "heatmap": heatmap_path,
    }


def _search_once(
    datasets,
    run_opts,
    frozen_modules,
    *,
    folder,
    seed,
    modules,
    checkpointer,
    epoch_counter,
    search_logger,
    brain_hparams,
    opt_class,
    lr_scheduler,
    theta_fraction,
    theta_split,
    train_dataloader_opts,
    valid_dataloader_opts,
    split_name,
    selection_metric,
):
    """One search in ``folder`` from random streams of its own (``seed``); reuses the
    folder's ``architecture.json`` when that search already finished."""
    architecture_path = os.path.join(folder, ARCHITECTURE_FILE)
    heatmap_path = os.path.join(folder, HEATMAP_FILE)
    if os.path.isfile(architecture_path):
        logger.info("Search already finished: reusing %s", architecture_path)
        return {**load_architecture(architecture_path), "heatmap": heatmap_path}
    brain_hparams = {
        **brain_hparams,
        "seed": seed,
        "search_folder": folder,
        "epoch_counter": epoch_counter,
    }
    search_modules = {
        **frozen_modules,
        **{name: m for name, m in modules.items() if m is not None},
    }
    # Everything random in the search (Gumbel noise, dropout, the held-out draw) comes
    # from `seed`, not from what the hparams built before, and the retraining after it
    # gets the random streams it would have had without a search.
    with own_random_streams(seed):
        brain = BASSearchBrain(
            modules=search_modules,
            opt_class=opt_class,
            lr_scheduler=lr_scheduler,
            train_logger=search_logger,
            hparams=brain_hparams,
            run_opts=run_opts,
            checkpointer=checkpointer,
        )
        train_set = datasets["train"]
        if theta_on_held_out(brain_hparams):
            if theta_split == "valid":
                # theta steps on the validation speakers; the weights keep every clip.
                brain.theta_set = datasets["valid"]
            else:
                train_set, brain.theta_set = theta_split_datasets(
                    train_set, theta_fraction, seed, by=theta_split
                )
        brain.fit(
            epoch_counter,
            train_set=train_set,
            valid_set=datasets["valid"],
            train_loader_kwargs=train_dataloader_opts,
            valid_loader_kwargs=valid_dataloader_opts,
        )
    supernet = brain.supernet
    architecture, ties = derive_architecture(supernet)
    probabilities = architecture_probabilities(supernet)
    if ties:
        logger.warning(
            "theta tied in layers %s: took the first candidate in the order %s.",
            [t + 1 for t in ties],
            list(supernet.candidates),
        )
    # The last epoch's validation scores: at the final temperature, of the derived path
    # (evaluation runs the argmax block of every layer) with the searched weights.
    last = checkpointer.find_checkpoint(
        ckpt_predicate=lambda ckpt: selection_metric in ckpt.meta
    )
    valid = (
        {}
        if last is None
        else {
            key: float(last.meta[key])
            for key in ("epoch", "loss", "WA", "UA", "WF1")
            if key in last.meta
        }
    )
    logger.info("Derived architecture: %s", " -> ".join(architecture))
    logger.info(
        "Final softmax(theta) (search_mode=%s):\n%s",
        search_mode_of(brain_hparams),
        "\n".join(
            f"L{i + 1} max {float(row.max()):.3f}"
            for i, row in enumerate(probabilities)
        ),
    )
    if sb.utils.distributed.if_main_process():
        # architecture.json marks the phase as done, so it is written last: a run killed
        # while drawing the heatmap searches (recovers) again instead of missing the PNG.
        rows = read_trajectory_rows(os.path.join(folder, TRAJECTORY_FILE))
        trajectory = None
        if rows:
            epochs, values, temperatures = trajectory_array(
                rows, supernet.candidates
            )
            trajectory = {
                "epochs": epochs,
                "probabilities": values,
                "temperatures": temperatures,
            }
        plot_theta_heatmap(
            probabilities,
            supernet.candidates,
            heatmap_path,
            title=f"BAS softmax(theta), {split_name}",
            trajectory=trajectory,
        )
        save_architecture(
            architecture_path,
            architecture,
            probabilities,
            supernet.candidates,
            ties,
            extra={"seed": seed, "valid": valid},
        )
    sb.utils.distributed.ddp_barrier()
    return {**load_architecture(architecture_path), "heatmap": heatmap_path}


def choose_restart(records, selection_metric):
    """Index of the restart whose last search epoch scored best on the validation set
    (``selection_metric``; ties: lower validation loss, then the earlier restart)."""
    if not records:
        raise ValueError("No search restarts to choose from.")
    missing = [
        index + 1
        for index, record in enumerate(records)
        if selection_metric not in record.get("valid", {})
    ]
    if missing:
        raise ValueError(
            f"Search restarts {missing} have no validation {selection_metric} in their "
            "architecture.json (written before restarts existed?): delete those restart "
            "folders and run again."
        )

    def rank(index):
        valid = records[index]["valid"]
        return (-valid[selection_metric], valid.get("loss", 0.0), index)

    return min(range(len(records)), key=rank)


def write_restarts(search_folder, records, chosen, selection_metric):
    """The chosen restart's result as ``<search_folder>/architecture.json`` (with every
    restart's summary), its heatmap and trajectory next to it, and ``restarts.md``."""
    chosen_folder = os.path.join(search_folder, f"restart{chosen + 1}")
    for name in (HEATMAP_FILE, TRAJECTORY_FILE, TRAJECTORY_MARKDOWN):
        source = os.path.join(chosen_folder, name)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(search_folder, name))
    summaries = [
        {
            "restart": index + 1,
            "seed": record["seed"],
            "architecture": list(record["architecture"]),
            "max_probabilities": [
                float(row.max()) for row in record["probabilities"]
            ],
            "valid": record["valid"],
        }
        for index, record in enumerate(records)
    ]
    lines = [
        f"Chosen: restart {chosen + 1} (best validation {selection_metric} of the last "
        "search epoch: the derived path with the searched weights).",
        "",
        f"| restart | seed | architecture | max softmax(theta) per layer | "
        f"valid {selection_metric} | valid loss |",
        "|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        mark = " (chosen)" if summary["restart"] == chosen + 1 else ""
        valid = summary["valid"]
        lines.append(
            f"| {summary['restart']}{mark} | {summary['seed']} | "
            f"{' -> '.join(summary['architecture'])} | "
            f"{' / '.join(f'{p:.2f}' for p in summary['max_probabilities'])} | "
            f"{valid[selection_metric]:.3f} | {valid.get('loss', float('nan')):.3f} |"
        )
    atomic_write_text(
        os.path.join(search_folder, RESTARTS_MARKDOWN), "\n".join(lines) + "\n"
    )
    record = records[chosen]
    # Written last: it marks the whole search (every restart) as done.
    save_architecture(
        os.path.join(search_folder, ARCHITECTURE_FILE),
        record["architecture"],
        record["probabilities"],
        record["candidates"],
        record["ties"],
        extra={
            "seed": record["seed"],
            "valid": record["valid"],
            "chosen_restart": chosen + 1,
            "restarts": summaries,
        },
    )
