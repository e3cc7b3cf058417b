"""The BAS search decides on a planted problem where one kind of block is clearly better.

Every utterance holds frames of two kinds: 4 frames of token ``a_i`` and 4 of token
``b_j`` (i, j in {0, 1}, fixed random vectors plus noise), in a random order; the label is
``i XOR j``. A network of frame-independent blocks (``ffn``) followed by mean pooling and
a linear classifier scores an utterance by a sum of per-frame scores, and no sum
``s(a_i) + s(b_j)`` can separate XOR (the two classes would need
``s(a0)+s(b0) + s(a1)+s(b1) > s(a0)+s(b1) + s(a1)+s(b0)``, the same sum): it stays at
chance. A block with self-attention lets a frame see the other token and solves it. So a
search that works must move softmax(theta) of a one-layer super net away from ``ffn`` to
the attention blocks, decisively; a search whose theta is frozen or whose gradient is cut
leaves it at 1/3 and fails. The search runs exactly as the recipe runs it
(``block_search`` as ``hparams/bas_fbank.yaml`` wires it, default search mode).
"""

import os

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from ser_modules.bas_search import (
    TRAJECTORY_FILE,
    read_trajectory_rows,
)
from ser_modules.downstream.blocks import CANDIDATES

DIM, FRAMES = 8, 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def planted_xor_dataset(num_items, seed, speakers=0):
    """``DynamicItemDataset`` of ``feats`` (T, 1, D) frames and ``emo_encoded`` XOR labels
    (with ``speakers`` > 0, clip k has ``spk_id`` ``s<k mod speakers>``)."""
    tokens = (
        torch.randn(4, DIM, generator=torch.Generator().manual_seed(0)) * 2.0
    )  # a0 a1 b0 b1
    generator = torch.Generator().manual_seed(seed)
    data = {}
    for index in range(num_items):
        i, j = torch.randint(2, (2,), generator=generator).tolist()
        frames = torch.cat(
            [
                tokens[i].expand(FRAMES // 2, DIM),
                tokens[2 + j].expand(FRAMES // 2, DIM),
            ]
        )
        frames = frames + 0.3 * torch.randn(FRAMES, DIM, generator=generator)
        frames = frames[torch.randperm(FRAMES, generator=generator)]
        data[f"utt{index:04d}"] = {
            "frames": frames.unsqueeze(1),
            "label": i ^ j,
        }  # (T, 1, D)
        if speakers:
            data[f"utt{index:04d}"]["spk_id"] = f"s{index % speakers}"
    dataset = sb.dataio.dataset.DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("frames")
    @sb.utils.data_pipeline.provides("feats")
    def feats(frames):
        return frames

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides("emo_encoded")
    def label(value):
        return torch.LongTensor([value])

    dataset.add_dynamic_item(feats)
    dataset.add_dynamic_item(label)
    dataset.set_output_keys(["id", "feats", "emo_encoded"])
    return dataset


def planted_hparams(tmp_path, **overrides):
    """The recipe's BAS hparams, sized for the planted problem."""
    with open(
        os.path.join(ROOT, "hparams", "bas_fbank.yaml"), encoding="utf-8"
    ) as handle:
        return load_hyperpyyaml(
            handle,
            {
                "data_folder": str(tmp_path),
                "output_folder": str(tmp_path / "out"),
                "split_name": "planted",
                "input_dim": DIM,
                "num_classes": 2,
                "num_upstream_layers": 1,
                "search_layers": 1,
                "num_heads": 2,
                "ffn_dim": 32,
                "dropout": 0.0,
                "batch_size": 16,
                "search_epochs": 12,
                "search_lr": 0.05,
                **overrides,
            },
        )


def planted_datasets(speakers=0):
    return {
        "train": planted_xor_dataset(192, seed=1, speakers=speakers),
        "valid": planted_xor_dataset(32, seed=2),
    }


def search_planted(tmp_path, speakers=0, **overrides):
    """Run the recipe's search phase on the planted problem; return its result."""
    hparams = planted_hparams(tmp_path, **overrides)
    return (
        hparams["block_search"](
            planted_datasets(speakers), {"device": "cpu"}, {}
        ),
        hparams,
    )


def record_theta_splits(monkeypatch):
    """Record every theta split the search draws: a list of ``(kwargs, weights, held_out)``."""
    import ser_modules.bas_search as bas_search

    splits = []
    original = bas_search.theta_split_datasets

    def recording_split(train_set, fraction, seed, **kwargs):
        weights, held_out = original(train_set, fraction, seed, **kwargs)
        splits.append((kwargs, weights, held_out))
        return weights, held_out

    monkeypatch.setattr(bas_search, "theta_split_datasets", recording_split)
    return splits


@pytest.fixture(scope="module")
def planted_search(tmp_path_factory):
    return search_planted(tmp_path_factory.mktemp("planted"))


def test_default_search_moves_theta_decisively_to_the_attention_blocks(
    planted_search,
):
    found, _ = planted_search
    probabilities = found["probabilities"][0]  # (K,) of the only layer
    attention = (
        probabilities[CANDIDATES.index("msa")]
        + probabilities[CANDIDATES.index("msa_ffn")]
    )
    assert found["architecture"][0] in ("msa", "msa_ffn")
    assert float(probabilities[CANDIDATES.index("ffn")]) < 0.15
    assert float(attention) > 0.85
    assert float(probabilities.max()) >= 0.6


def test_the_theta_trajectory_is_written_for_every_epoch(planted_search):
    _, hparams = planted_search
    rows = read_trajectory_rows(
        os.path.join(hparams["search_folder"], TRAJECTORY_FILE)
    )
    assert sorted({int(row["epoch"]) for row in rows}) == list(range(1, 13))
    assert len(rows) == 12 * len(CANDIDATES)
    first = [float(row["probability"]) for row in rows if row["epoch"] == "1"]
    last = [float(row["probability"]) for row in rows if row["epoch"] == "12"]
    assert max(last) > max(first)  # the probabilities in the file move
    temperatures = [
        float(row["temperature"])
        for row in rows
        if row["candidate"] == CANDIDATES[0]
    ]
    assert temperatures[0] == pytest.approx(5.0) and temperatures[
        -1
    ] == pytest.approx(0.1)
    assert all(float(row["grad_norm"]) > 0 for row in rows)


def test_a_search_whose_theta_cannot_learn_stays_undecided(tmp_path):
    # The control: the same search with theta's learning rate at 0 (what a cut gradient
    # or a frozen theta amounts to) fails the decisiveness the test above asserts.
    found, _ = search_planted(tmp_path, theta_lr=0.0, search_epochs=2)
    assert torch.allclose(
        found["probabilities"], torch.full((1, 3), 1 / 3, dtype=torch.float64)
    )


def test_annealed_temperature_runs_from_initial_to_final_geometrically():
    from ser_modules.bas_search import annealed_temperature

    assert annealed_temperature(1, 20, 5.0, 0.1) == pytest.approx(5.0)
    assert annealed_temperature(20, 20, 5.0, 0.1) == pytest.approx(0.1)
    # Halfway (epoch 11 of 21) is the geometric mean.
    assert annealed_temperature(11, 21, 5.0, 0.1) == pytest.approx(
        (5.0 * 0.1) ** 0.5
    )
    with pytest.raises(ValueError):
        annealed_temperature(0, 20)


def test_fbnet_mode_trains_theta_on_a_disjoint_held_out_share(tmp_path):
    from ser_modules.bas_search import theta_split_datasets

    dataset = planted_xor_dataset(40, seed=3)
    weights, held_out = theta_split_datasets(dataset, 0.25, seed=1)
    assert len(held_out) == 10 and len(weights) == 30
    assert not set(weights.data_ids) & set(held_out.data_ids)
    found, _ = search_planted(tmp_path, search_mode="fbnet", search_epochs=3)
    assert not torch.allclose(
        found["probabilities"], torch.full((1, 3), 1 / 3, dtype=torch.float64)
    )


def test_a_speaker_theta_share_holds_out_whole_training_speakers():
    from ser_modules.bas_search import theta_split_datasets

    dataset = planted_xor_dataset(96, seed=3, speakers=12)

    def speakers_of(part):
        return {dataset.data[i]["spk_id"] for i in part.data_ids}

    weights, held_out = theta_split_datasets(
        dataset, 0.25, seed=0, by="speakers", label_key="label"
    )
    assert not speakers_of(weights) & speakers_of(held_out)
    assert (
        len(speakers_of(held_out)) == 3
    )  # a quarter of 12 equal-sized speakers
    assert len(held_out) == 24 and len(weights) == 72
    assert {dataset.data[i]["label"] for i in held_out.data_ids} == {0, 1}
    again = theta_split_datasets(
        dataset, 0.25, seed=0, by="speakers", label_key="label"
    )[1]
    assert again.data_ids == held_out.data_ids  # seeded
    other = theta_split_datasets(
        dataset, 0.25, seed=5, by="speakers", label_key="label"
    )[1]
    assert speakers_of(other) != speakers_of(held_out)
    # The clip split of the same data mixes the speakers across the two parts.
    weights, held_out = theta_split_datasets(dataset, 0.25, seed=0, by="clips")
    assert speakers_of(weights) & speakers_of(held_out)


def test_a_speaker_theta_share_without_speakers_is_refused_clearly():
    from ser_modules.bas_search import theta_split_datasets

    with pytest.raises(
        ValueError, match="no 'spk_id' column.*--theta_split=clips"
    ):
        theta_split_datasets(
            planted_xor_dataset(20, seed=3), 0.25, 0, by="speakers"
        )
    with pytest.raises(ValueError, match="at least 2 training speakers"):
        theta_split_datasets(
            planted_xor_dataset(20, seed=3, speakers=1), 0.25, 0, by="speakers"
        )
    with pytest.raises(ValueError, match="Unknown theta_split 'voices'"):
        theta_split_datasets(
            planted_xor_dataset(20, seed=3), 0.25, 0, by="voices"
        )


def test_a_search_on_held_out_speakers_steps_theta_on_unseen_speakers(
    tmp_path, monkeypatch
):
    splits = record_theta_splits(monkeypatch)
    found, _ = search_planted(
        tmp_path,
        speakers=8,
        theta_held_out=True,
        theta_split="speakers",
        search_epochs=6,
    )
    ((kwargs, weights, held_out),) = splits
    weight_speakers, theta_speakers = (
        {part.data[i]["spk_id"] for i in part.data_ids}
        for part in (weights, held_out)
    )
    assert kwargs == {"by": "speakers"}
    assert theta_speakers and not weight_speakers & theta_speakers
    assert found["architecture"][0] in ("msa", "msa_ffn")  # XOR needs attention
    assert float(found["probabilities"][0].max()) >= 0.6


def test_a_search_on_the_validation_set_steps_theta_on_it(
    tmp_path, monkeypatch
):
    import ser_modules.bas_search as bas_search

    def no_split(*args, **kwargs):
        raise AssertionError("theta_split=valid keeps every training clip")

    seen = []
    original_fit = bas_search.BASSearchBrain.fit

    def recording_fit(self, epoch_counter, train_set, valid_set, **kwargs):
        seen.append((list(train_set.data_ids), list(self.theta_set.data_ids)))
        seen.append(list(valid_set.data_ids))
        return original_fit(self, epoch_counter, train_set, valid_set, **kwargs)

    monkeypatch.setattr(bas_search, "theta_split_datasets", no_split)
    monkeypatch.setattr(bas_search.BASSearchBrain, "fit", recording_fit)
    found, _ = search_planted(
        tmp_path, theta_held_out=True, theta_split="valid", search_epochs=6
    )
    (train_ids, theta_ids), valid_ids = seen
    assert (
        len(train_ids) == 192
        and theta_ids == valid_ids
        and len(theta_ids) == 32
    )
    assert not torch.allclose(
        found["probabilities"], torch.full((1, 3), 1 / 3, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="Unknown theta_split 'test'"):
        search_planted(tmp_path / "t", theta_held_out=True, theta_split="test")
    # Without a held-out theta the split would be ignored: refused, not ignored.
    with pytest.raises(ValueError, match="add --theta_held_out=True"):
        search_planted(tmp_path / "u", theta_split="speakers")


def test_the_heatmap_draws_the_trajectory_beside_the_final_table(tmp_path):
    import matplotlib.image

    from ser_modules.downstream.architecture import plot_theta_heatmap

    history = torch.softmax(torch.randn(5, 2, 3), dim=-1)
    path = plot_theta_heatmap(
        history[-1],
        CANDIDATES,
        tmp_path / "t.png",
        "t",
        dpi=50,
        trajectory={
            "epochs": [1, 2, 3, 4, 5],
            "probabilities": history,
            "temperatures": torch.linspace(5, 1, 5),
        },
    )
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width == int((2.5 + 1.5 * 3 + 6.0) * 50)
    with pytest.raises(ValueError):
        plot_theta_heatmap(
            history[-1],
            CANDIDATES,
            tmp_path / "u.png",
            "t",
            trajectory={"epochs": [1], "probabilities": torch.ones(1, 3, 3)},
        )


def test_decisive_search_on_a_held_out_share_anneals_and_moves_theta(
    tmp_path, monkeypatch
):
    import ser_modules.bas_search as bas_search

    splits = record_theta_splits(monkeypatch)
    found, hparams = search_planted(
        tmp_path, theta_held_out=True, search_epochs=3
    )
    ((_, weights, held_out),) = splits
    weights, held_out = set(weights.data_ids), set(held_out.data_ids)
    assert len(held_out) == round(0.2 * 192) and not weights & held_out
    assert not torch.allclose(
        found["probabilities"], torch.full((1, 3), 1 / 3, dtype=torch.float64)
    )
    rows = read_trajectory_rows(
        os.path.join(hparams["search_folder"], TRAJECTORY_FILE)
    )
    temperatures = [
        float(row["temperature"])
        for row in rows
        if row["candidate"] == CANDIDATES[0]
    ]  # the decisive annealing, not FBNet's decay (5, 4.78, 4.56)
    assert temperatures == pytest.approx([5.0, (5.0 * 0.1) ** 0.5, 0.1])
    # The plain decisive mode and the paper mode keep theta on the weights' batches.
    assert bas_search.theta_on_held_out({"search_mode": "decisive"}) is False
    assert (
        bas_search.theta_on_held_out(
            {"search_mode": "paper", "theta_held_out": True}
        )
        is False
    )
    assert bas_search.theta_on_held_out({"search_mode": "fbnet"}) is True


def test_own_random_streams_depend_on_their_seed_and_leave_the_outer_ones_alone():
    import random

    import numpy as np

    from ser_modules.resume import own_random_streams

    def draws():
        return (
            torch.rand(3).tolist(),
            random.random(),
            float(np.random.rand()),
        )

    sb.utils.seed_everything(0, verbose=False)
    with own_random_streams(7):
        inside = draws()
    after = draws()
    sb.utils.seed_everything(0, verbose=False)
    assert draws() == after  # as if the block had not run
    sb.utils.seed_everything(123, verbose=False)
    with own_random_streams(7):
        assert draws() == inside  # whatever the outer streams were
    with own_random_streams(8):
        assert draws() != inside


def supernet_state(hparams):
    return {k: v.clone() for k, v in hparams["supernet"].state_dict().items()}


def test_the_super_net_starts_from_search_seed_whatever_the_retraining_network(
    tmp_path,
):
    # pooling=stats doubles the retraining classifier's input, so that network draws more
    # random numbers before the super net is built; the super net must not notice.
    mean = planted_hparams(tmp_path / "a", pooling="mean")
    stats = planted_hparams(tmp_path / "b", pooling="stats")
    assert sum(p.numel() for p in mean["downstream"].parameters()) != sum(
        p.numel() for p in stats["downstream"].parameters()
    )
    first, second = supernet_state(mean), supernet_state(stats)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = supernet_state(planted_hparams(tmp_path / "c", search_seed=7))
    assert not torch.equal(
        first["classifier.weight"], other["classifier.weight"]
    )
    # reinitialise(seed) is a fresh super net built from that seed.
    hparams = planted_hparams(tmp_path / "d", search_seed=7)
    hparams["supernet"].reinitialise(1986)
    again = supernet_state(hparams)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_the_search_leaves_the_recipes_random_streams_alone(tmp_path):
    hparams = planted_hparams(tmp_path, search_epochs=2)
    before = torch.get_rng_state()
    hparams["block_search"](planted_datasets(), {"device": "cpu"}, {})
    assert torch.equal(torch.get_rng_state(), before)


def test_restarts_search_from_other_seeds_and_keep_the_best_on_validation(
    tmp_path,
):
    import json

    from ser_modules.bas_search import (
        RESTARTS_MARKDOWN,
        choose_restart,
    )
    from ser_modules.downstream import load_architecture

    single, single_hparams = search_planted(tmp_path / "one", search_epochs=3)
    found, hparams = search_planted(
        tmp_path / "three", search_epochs=3, search_restarts=3
    )
    folder = hparams["search_folder"]
    records = [
        load_architecture(
            os.path.join(folder, f"restart{k}", "architecture.json")
        )
        for k in (1, 2, 3)
    ]
    assert [r["seed"] for r in records] == [1986, 1987, 1988]
    # Restart 1 is the single search, bit for bit (same seed, same starting weights).
    assert torch.equal(records[0]["probabilities"], single["probabilities"])
    with (
        open(
            os.path.join(single_hparams["search_folder"], TRAJECTORY_FILE)
        ) as a,
        open(os.path.join(folder, "restart1", TRAJECTORY_FILE)) as b,
    ):
        assert a.read() == b.read()
    assert not torch.equal(
        records[0]["probabilities"], records[1]["probabilities"]
    )
    # The result is the restart with the best last-epoch validation UA.
    scores = [r["valid"]["UA"] for r in records]
    assert all(r["valid"]["epoch"] == 3 for r in records)
    chosen = choose_restart(records, "UA")
    assert scores[chosen] == max(scores)
    with open(os.path.join(folder, "architecture.json")) as handle:
        written = json.load(handle)
    assert written["chosen_restart"] == chosen + 1
    assert found["architecture"] == records[chosen]["architecture"]
    assert torch.equal(found["probabilities"], records[chosen]["probabilities"])
    assert [r["architecture"] for r in written["restarts"]] == [
        r["architecture"] for r in records
    ]
    with open(os.path.join(folder, RESTARTS_MARKDOWN)) as handle:
        table = handle.read()
    assert table.count("| seed |") == 1 and "(chosen)" in table
    assert sorted(os.listdir(folder)) == sorted(
        [
            "architecture.json",
            RESTARTS_MARKDOWN,
            "restart1",
            "restart2",
            "restart3",
            "theta_heatmap.png",
            TRAJECTORY_FILE,
            "theta_trajectory.md",
        ]
    )
    # A run killed before the choice reuses the finished restarts.
    os.remove(os.path.join(folder, "architecture.json"))
    again, _ = search_planted(
        tmp_path / "three", search_epochs=3, search_restarts=3
    )
    assert again["architecture"] == found["architecture"]
    assert torch.equal(again["probabilities"], found["probabilities"])


def test_choose_restart_breaks_ties_on_loss_and_refuses_missing_scores():
    from ser_modules.bas_search import choose_restart

    def record(ua, loss):
        return {"valid": {"UA": ua, "loss": loss}}

    records = [record(0.5, 0.7), record(0.8, 0.9), record(0.8, 0.6)]
    assert choose_restart(records, "UA") == 2
    assert choose_restart(records[:2], "UA") == 1
    with pytest.raises(ValueError, match="restarts \\[2\\]"):
        choose_restart([record(0.5, 0.7), {"valid": {}}], "UA")


@pytest.mark.parametrize("held_out", [False, True])
def test_a_theta_warmup_trains_the_weights_alone_then_searches(
    tmp_path, monkeypatch, held_out
):
    import math

    import ser_modules.bas_search as bas_search

    theta_grads = []
    original_end = bas_search.BASSearchBrain.on_stage_end

    def recording_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            theta_grads.append(
                [p.grad for p in self.supernet.architecture_parameters()]
            )
        return original_end(self, stage, stage_loss, epoch)

    monkeypatch.setattr(
        bas_search.BASSearchBrain, "on_stage_end", recording_end
    )
    found, hparams = search_planted(
        tmp_path,
        theta_held_out=held_out,
        theta_warmup_epochs=3,
        search_epochs=12,
    )
    rows = read_trajectory_rows(
        os.path.join(hparams["search_folder"], TRAJECTORY_FILE)
    )
    first = [row for row in rows if row["candidate"] == CANDIDATES[0]]
    # Warm-up: theta untouched (softmax exactly uniform), no gradient kept for it, no
    # theta step logged, the first temperature held.
    for row in first[:3]:
        assert float(row["theta"]) == 0.0 and math.isnan(
            float(row["grad_norm"])
        )
        assert float(row["temperature"]) == 5.0
    assert all(grad is None for grads in theta_grads[:3] for grad in grads)
    # Then the decisive annealing over the 9 epochs left: 5 at epoch 4, 0.1 at epoch 12.
    assert [float(row["temperature"]) for row in first[3:]] == pytest.approx(
        [5.0 * (0.1 / 5.0) ** (k / 8) for k in range(9)], rel=1e-5
    )
    assert float(first[3]["theta"]) != 0.0 and float(first[3]["grad_norm"]) > 0
    # ... and it still decides on attention (XOR needs it).
    assert found["architecture"][0] in ("msa", "msa_ffn")
    assert float(found["probabilities"][0].max()) >= 0.6
    markdown = open(
        os.path.join(hparams["search_folder"], "theta_trajectory.md"),
        encoding="utf-8",
    ).read()
    assert "| 1 | 5.000 | 0.333 | 0.333 | 0.333 | 0.333 | - |" in markdown


def test_a_theta_warmup_that_cannot_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="below search_epochs=4"):
        search_planted(tmp_path / "a", theta_warmup_epochs=4, search_epochs=4)
    with pytest.raises(ValueError, match="must be >= 0"):
        search_planted(tmp_path / "b", theta_warmup_epochs=-1)
    with pytest.raises(ValueError, match="--search_mode=decisive"):
        search_planted(
            tmp_path / "c", search_mode="paper", theta_warmup_epochs=2
        )
