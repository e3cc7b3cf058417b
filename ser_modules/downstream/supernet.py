"""The BAS super net: every searchable layer holds all candidate blocks in parallel.

Search (BAS paper 2.2, following FBNet): each layer ``l`` has architecture parameters
``theta_l`` (one per candidate, initialised to zeros so the search starts from a uniform
distribution). In training mode the layer output is ``sum_i m_i * f_i(x)`` with
``m = gumbel_softmax(theta_l, tau)`` (eqs. 4-5), one sample per layer and batch, so the
loss is differentiable with respect to both the block weights and theta.

In evaluation mode a layer runs only its argmax candidate (ties: the first candidate in
the candidate order). That is the network the search returns ("only one of the
candidate blocks is sampled and executed during the inference", paper 2.2), so the
validation score of the super net estimates the score of the derived architecture with
the shared weights, and evaluation costs one block per layer instead of three. A noiseless
``softmax(theta / tau)`` mixture would instead evaluate a network that is never derived.

The temperature is a registered buffer: it is checkpointed with the module and a resumed
search continues from the right value. Anneal it once per epoch with
``set_temperature(fbnet_temperature(epoch))``.
"""

import contextlib
import math

import torch

from ser_modules.downstream.blocks import CANDIDATES, build_block
from ser_modules.downstream.models import LayerStackClassifier
from ser_modules.resume import own_random_streams


def fbnet_temperature(epoch, initial=5.0, decay=0.045):
    """Gumbel-softmax temperature of FBNet's schedule: ``initial * exp(-decay * (epoch - 1))``.

    Arguments
    ---------
    epoch : int
        Epoch number, 1-based (SpeechBrain's ``EpochCounter`` convention).
    initial : float
        Temperature of the first epoch (5.0 in FBNet).
    decay : float
        Per-epoch decay rate of the exponent (0.045 in FBNet).

    Returns
    -------
    float
        The temperature for that epoch.
    """
    if epoch < 1:
        raise ValueError(f"Epochs are counted from 1, got epoch={epoch}.")
    return initial * math.exp(-decay * (epoch - 1))


class SearchableLayer(torch.nn.Module):
    """One searchable layer: candidate blocks in parallel, mixed by Gumbel-softmax weights.

    Arguments
    ---------
    dim : int
        Width of the blocks.
    num_heads : int
        Attention heads of the blocks with attention.
    ffn_dim : int
        Hidden size of the blocks with a feed-forward network.
    dropout : float
        Dropout inside the blocks.
    candidates : sequence of str
        Block names from ``blocks.BLOCKS``, in the order of ``theta``'s entries.
    """

    def __init__(self, dim, num_heads, ffn_dim, dropout, candidates=CANDIDATES):
        super().__init__()
        if len(set(candidates)) != len(candidates) or len(candidates) == 0:
            raise ValueError(
                f"Candidates must be distinct and non-empty, got {candidates}."
            )
        self.candidate_names = tuple(candidates)
        self.candidates = torch.nn.ModuleDict(
            {
                name: build_block(name, dim, num_heads, ffn_dim, dropout)
                for name in candidates
            }
        )
        self.theta = torch.nn.Parameter(torch.zeros(len(candidates)))  # (K,)

    def sample_weights(self, temperature):
        """Draws the mixing weights ``m`` of eq. (4).

        Arguments
        ---------
        temperature : float or torch.Tensor
            Gumbel-softmax temperature tau > 0.

        Returns
        -------
        torch.Tensor
            ``(K,)`` non-negative weights summing to 1, differentiable w.r.t. ``theta``.
        """
        return torch.nn.functional.gumbel_softmax(
            self.theta, tau=float(temperature), hard=False
        )

    def chosen_index(self):
        """Index of the largest theta; ties go to the first candidate (``torch.argmax``)."""
        return int(torch.argmax(self.theta.detach()))

    def forward(self, x, padding_mask, temperature):
        """Mixes all candidates (training) or runs the argmax candidate (evaluation).

        Arguments
        ---------
        x : torch.Tensor
            ``(B, T, D)`` frame features.
        padding_mask : torch.BoolTensor
            ``(B, T)``, True on padded frames.
        temperature : float or torch.Tensor
            Gumbel-softmax temperature tau.

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        if not self.training:
            chosen = self.candidate_names[self.chosen_index()]
            return self.candidates[chosen](x, padding_mask)
        weights = self.sample_weights(temperature)  # (K,)
        # Accumulate instead of stacking K outputs: one (B, T, D) buffer less per layer.
        # Every candidate runs even when its weight underflows to 0, so all parameters
        # take part in every step (DistributedDataParallel expects that).
        mixed = 0.0
        for weight, block in zip(weights, self.candidates.values()):
            mixed = mixed + weight * block(x, padding_mask)  # (B, T, D)
        return mixed


class BASSuperNet(LayerStackClassifier):
    """Stochastic super net of the BAS search (same macro-architecture as the derived nets).

    ``input projection -> L searchable layers (no skips) -> masked mean pool -> linear``,
    with the parameter names of ``BlockStackClassifier`` for the shared parts, so
    ``derived_state_dict`` can hand the weights of any path to a stand-alone network.

    Arguments
    ---------
    input_dim : int
        D, the upstream feature size.
    num_classes : int
        C, the number of classes.
    num_layers : int
        L, the number of searchable layers (3 or 4 in the paper).
    model_dim : int or None
        Width of the blocks; None (default) uses ``input_dim`` with no input projection.
    num_heads : int
        Attention heads, the same in every candidate.
    ffn_dim : int
        Feed-forward hidden size, the same in every candidate.
    dropout : float
        Dropout inside the blocks.
    candidates : sequence of str
        Candidate block names, in the column order of theta.
    initial_temperature : float
        Starting Gumbel-softmax temperature (FBNet: 5.0).
    init_seed : int or None
        Draw the starting weights from a generator seeded with this (the global random
        streams are left as they were); None (default) draws them from the global stream.
    """

    def __init__(
        self,
        input_dim,
        num_classes,
        num_layers,
        model_dim=None,
        num_heads=8,
        ffn_dim=2048,
        dropout=0.1,
        candidates=CANDIDATES,
        initial_temperature=5.0,
        init_seed=None,
    ):
        if num_layers < 1:
            raise ValueError(
                f"The super net needs at least one layer, got {num_layers}."
            )
        width = input_dim if model_dim is None else model_dim
        streams = (
            contextlib.nullcontext()
            if init_seed is None
            else own_random_streams(init_seed)
        )
        with streams:
            layers = [
                SearchableLayer(width, num_heads, ffn_dim, dropout, candidates)
                for _ in range(num_layers)
            ]
            super().__init__(input_dim, num_classes, model_dim, layers)
        self.candidates = tuple(candidates)
        self.register_buffer("temperature", torch.empty(()))
        self.set_temperature(initial_temperature)
        self._settings = {
            "input_dim": input_dim,
            "num_classes": num_classes,
            "num_layers": num_layers,
            "model_dim": model_dim,
            "num_heads": num_heads,
            "ffn_dim": ffn_dim,
            "dropout": dropout,
            "candidates": tuple(candidates),
            "initial_temperature": initial_temperature,
        }

    def reinitialise(self, init_seed):
        """Resets every weight, theta and the temperature to a fresh super net's, as
        built with ``init_seed`` (the global random streams are left as they were)."""
        fresh = type(self)(**self._settings, init_seed=init_seed)
        self.load_state_dict(fresh.state_dict())

    @property
    def num_layers(self):
        """L, the number of searchable layers."""
        return len(self.layers)

    def set_temperature(self, temperature):
        """Sets the Gumbel-softmax temperature tau (> 0) used by every layer."""
        if not temperature > 0:
            raise ValueError(
                f"The Gumbel-softmax temperature must be > 0, got {temperature}."
            )
        self.temperature.fill_(float(temperature))

    def apply_layer(self, layer, x, padding_mask):
        """Runs one searchable layer at the current temperature."""
        return layer(x, padding_mask, self.temperature)

    def architecture_parameters(self):
        """The thetas, one ``(K,)`` parameter per layer (for the architecture optimiser)."""
        return [layer.theta for layer in self.layers]

    def weight_parameters(self):
        """Every parameter except the thetas (for the weight optimiser)."""
        thetas = {id(theta) for theta in self.architecture_parameters()}
        return [param for param in self.parameters() if id(param) not in thetas]

    def architecture_logits(self):
        """The thetas of all layers as one detached ``(L, K)`` tensor."""
        return torch.stack(
            [theta.detach() for theta in self.architecture_parameters()]
        )


def derived_state_dict(supernet, architecture):
    """Weights of one path of the super net, named for a ``BlockStackClassifier``.

    ``layers.<l>.candidates.<name>.*`` of the chosen block becomes ``layers.<l>.*``; the
    input projection and the classifier keep their names; thetas, the other candidates
    and the temperature are dropped. Load the result with
    ``BlockStackClassifier(..., architecture, <same widths>).load_state_dict(...)``.

    Arguments
    ---------
    supernet : BASSuperNet
        The trained super net.
    architecture : list of str
        One candidate name per layer, e.g. from ``derive_architecture``.

    Returns
    -------
    dict
        Parameter name -> tensor.
    """
    if len(architecture) != supernet.num_layers:
        raise ValueError(
            f"The architecture {architecture} has {len(architecture)} layers, the super "
            f"net has {supernet.num_layers}."
        )
    unknown = [name for name in architecture if name not in supernet.candidates]
    if unknown:
        raise ValueError(
            f"Blocks {unknown} are not candidates of this super net {supernet.candidates}."
        )
    chosen_prefixes = {
        f"layers.{index}.candidates.{name}.": f"layers.{index}."
        for index, name in enumerate(architecture)
    }
    state = {}
    for key, value in supernet.state_dict().items():
        if key.startswith("layers."):
            for prefix, new_prefix in chosen_prefixes.items():
                if key.startswith(prefix):
                    state[new_prefix + key[len(prefix) :]] = value
        elif key != "temperature":
            state[key] = value
    return state
