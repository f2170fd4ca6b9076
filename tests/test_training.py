"""fit, the sweep around it, the predictor and the model registry."""

from dataclasses import replace

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from edgeloop.lake import Lake
from edgeloop.models import build_model, weights_hash
from edgeloop.predictor import SCORE_NAMES, Predictor
from edgeloop.registry import (
    ModelRecord,
    TrainedModel,
    best_so_far,
    last_rejection,
    load_model,
    promoted_row,
    register_model,
)
from edgeloop.training import (
    FitConfig,
    ModelInput,
    SweepConfig,
    average_states,
    fit,
    fit_soup,
    run_sweep,
    seed_everything,
    soup_seeds,
)

NAMES = ("background", "square")


def toy_input(n: int = 24, size: int = 32, seed: int = 0) -> ModelInput:
    """Bright squares (class 1) on a dark noisy background."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size - 12, 2)
        images[i, y : y + 12, x : x + 12] = 220
        masks[i, y : y + 12, x : x + 12] = 1
    splits = np.array(["train"] * (n - 8) + ["val"] * 4 + ["test"] * 4)
    return ModelInput(
        images=images,
        masks=masks,
        image_ids=np.array([f"img{i:03d}" for i in range(n)]),
        splits=splits,
        weights=np.ones(n),
        class_names=NAMES,
    )


FAST = FitConfig(
    architecture="lraspp_mobilenet_v3_large",
    epochs=3,
    batch_size=8,
    lr=3e-3,
    init="scratch",
    aug_strength=0.0,
)


def test_fit_is_deterministic_and_learns():
    data = toy_input()
    a = fit(FAST, data)
    b = fit(FAST, data)
    assert weights_hash(a.model.state_dict()) == weights_hash(b.model.state_dict())
    assert [c["val_score"] for c in a.curves] == [c["val_score"] for c in b.curves]
    assert a.curves[-1]["train_loss"] < a.curves[0]["train_loss"]
    assert a.policy == "early_stopping" and a.n_params < 5_000_000
    assert a.best_score == max(c["val_score"] for c in a.curves)


def test_large_models_decay_lr_every_epoch():
    config = FitConfig(
        architecture="deeplabv3_mobilenet_v3_large",
        epochs=2,
        lr_gamma=0.5,
        init="scratch",
        batch_size=8,
    )
    result = fit(config, toy_input(n=16, size=32))
    assert result.policy == "exponential_lr"
    assert [c["lr"] for c in result.curves] == pytest.approx([1e-3, 5e-4])


def test_warm_start_loads_the_parent_weights():
    data = toy_input()
    parent = fit(FAST, data)
    config = FitConfig(**{**FAST.__dict__, "init": "warm", "epochs": 1, "lr": 1e-9})
    child = fit(config, data, init_state=parent.model.state_dict(), init_label="warm:p")
    assert child.weights_source == "warm:p"
    # With a vanishing learning rate the child keeps its parent's parameters
    # (batch-norm running statistics still move: they are not learnt).
    child_params = dict(child.model.named_parameters())
    for key, value in parent.model.named_parameters():
        assert torch.allclose(child_params[key], value, atol=1e-5), key


def _param_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest absolute difference between two models' parameters."""
    theirs = dict(b.named_parameters())
    return max(
        float((value - theirs[key]).abs().max().detach())
        for key, value in a.named_parameters()
    )


def test_ema_returns_the_running_average_from_the_warm_start():
    data = toy_input()
    parent = fit(FAST, data)
    warm = replace(FAST, init="warm", epochs=1)
    plain = fit(warm, data, init_state=parent.model.state_dict())
    # A decay this close to 1 keeps the average at its first term, the parent.
    slow, again = (
        fit(replace(warm, ema_decay=0.9999), data, init_state=parent.model.state_dict())
        for _ in range(2)
    )
    assert weights_hash(slow.model.state_dict()) == weights_hash(
        again.model.state_dict()
    )
    moved = _param_gap(plain.model, parent.model)
    slow_gap = _param_gap(slow.model, parent.model)
    assert moved > 1e-3  # the plain fit left the parent's weights
    assert slow_gap < moved * 1e-3  # its average stayed there
    with pytest.raises(ValueError, match="ema_decay must be in"):
        replace(warm, ema_decay=1.0)


def test_ema_from_scratch_begins_after_the_first_step():
    config = replace(FAST, epochs=1, ema_decay=0.9999)
    seed_everything(config.seed)  # what fit does before building the model
    init, _ = build_model(config.architecture, len(NAMES), pretrained=False)
    result = fit(config, toy_input())
    # The average is (almost) the first step's weights, not the random init.
    assert _param_gap(result.model, init) > 1e-3


def test_average_states_averages_floats_and_keeps_counters():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 7.0]), "n": torch.tensor(9)}
    soup = average_states([a, b])
    assert torch.equal(soup["w"], torch.tensor([2.0, 5.0]))
    assert int(soup["n"]) == 5  # an integer counter is the first state's
    with pytest.raises(ValueError, match="differ at 'w'"):
        average_states([a, {"w": torch.zeros(3), "n": torch.tensor(1)}])
    with pytest.raises(ValueError, match="differ in their keys"):
        average_states([a, {"w": torch.zeros(2)}])
    with pytest.raises(ValueError, match="at least one"):
        average_states([])


def test_soup_seeds_start_at_the_seed_and_do_not_overlap_nearby_ones():
    assert soup_seeds(7, 1) == [7]
    assert soup_seeds(0, 3)[0] == 0 and len(set(soup_seeds(0, 3))) == 3
    assert soup_seeds(0, 3) == soup_seeds(0, 3)
    assert not set(soup_seeds(0, 3)) & set(soup_seeds(1, 3))


def test_fit_soup_averages_refits_from_the_warm_start():
    data = toy_input()
    parent = fit(FAST, data).model.state_dict()
    warm = replace(FAST, init="warm", epochs=2)
    one = fit_soup(warm, data, ingredients=1, init_state=parent)
    plain = fit(warm, data, init_state=parent)
    # One ingredient is the plain fit.
    assert weights_hash(one.model.state_dict()) == weights_hash(
        plain.model.state_dict()
    )
    assert one.extra == {}
    soup, again = (
        fit_soup(warm, data, ingredients=3, init_state=parent) for _ in range(2)
    )
    assert weights_hash(soup.model.state_dict()) == weights_hash(
        again.model.state_dict()
    )
    info = soup.extra["soup"]
    assert info["seeds"] == soup_seeds(0, 3) and len(info["val_scores"]) == 3
    assert info["val_scores"][0] == pytest.approx(plain.best_score)
    assert info["returned"] == "soup"
    # The parameters are the mean of the three seeds' refits.
    members = [
        dict(
            fit(replace(warm, seed=s), data, init_state=parent).model.named_parameters()
        )
        for s in info["seeds"]
    ]
    for key, value in soup.model.named_parameters():
        mean = torch.stack([m[key] for m in members]).mean(dim=0)
        assert torch.allclose(value, mean, atol=1e-6), key
    assert soup.best_score == info["soup_val_score"]
    for bad in (0, -1, 2.5, "3", True):
        with pytest.raises(ValueError, match="refit_soup must be an integer >= 1"):
            fit_soup(warm, data, ingredients=bad, init_state=parent)


def test_a_soup_worse_than_every_ingredient_falls_back_to_the_best(monkeypatch):
    import edgeloop.training as training

    data = toy_input()
    parent = fit(FAST, data).model.state_dict()
    warm = replace(FAST, init="warm", epochs=2)
    seed = soup_seeds(0, 3)[2]
    third = fit(replace(warm, seed=seed), data, init_state=parent).model.state_dict()
    real = training.validation_score
    calls = []

    def scores(model, val, metric, **kw):
        # 3 ingredients x 2 epochs score for real (the third the best);
        # the soup, scored last, is made worse than all of them.
        calls.append(1)
        if len(calls) > 6:
            return -1.0
        return real(model, val, metric, **kw) + (0.1 if len(calls) > 4 else 0.0)

    monkeypatch.setattr(training, "validation_score", scores)
    result = fit_soup(warm, data, ingredients=3, init_state=parent)
    info = result.extra["soup"]
    assert info["soup_val_score"] == -1.0
    assert info["returned"] == "ingredient 2"
    assert result.best_score == info["val_scores"][2] == max(info["val_scores"])
    assert weights_hash(result.model.state_dict()) == weights_hash(third)


def test_fit_soup_without_a_warm_start_trains_one_model():
    data = toy_input()
    soup = fit_soup(FAST, data, ingredients=3)  # init scratch: nothing shared
    assert weights_hash(soup.model.state_dict()) == weights_hash(
        fit(FAST, data).model.state_dict()
    )
    assert soup.extra == {}


def test_fit_needs_train_and_val():
    data = toy_input()
    only_train = ModelInput(
        data.images,
        data.masks,
        data.image_ids,
        np.array(["train"] * len(data)),
        data.weights,
        NAMES,
    )
    with pytest.raises(ValueError, match="needs train and val images"):
        fit(FAST, only_train)


def test_sweep_needs_two_trials_per_architecture():
    with pytest.raises(ValueError, match="at least twice the number of architectures"):
        SweepConfig(n_trials=5)


def test_sweep_first_trials_hold_the_defaults_when_asked(tmp_path):
    base = FitConfig(epochs=1, init="scratch", lr=0.002, aug_strength=0.25)
    archs = ("unet_resnet18", "lraspp_mobilenet_v3_large")
    assert SweepConfig(architectures=archs, n_trials=4).first_trials(base) == [
        {"architecture": a} for a in archs
    ]
    defaults = {
        "lr": 0.002,
        "weight_decay": base.weight_decay,
        "batch_size": 8,
        "aug_strength": 0.25,
        "lr_gamma": base.lr_gamma,
    }
    sweep = SweepConfig(
        n_trials=2,
        architectures=("unet_resnet18",),
        storage=f"sqlite:///{tmp_path}/study.db",
        study_name="t",
        first_trial="defaults",
    )
    study = run_sweep(toy_input(n=16, size=32), base=base, sweep=sweep, progress=False)
    assert study.trials[0].params == {"architecture": "unet_resnet18", **defaults}
    assert study.trials[1].params != study.trials[0].params  # the sampler's own
    assert (
        SweepConfig.from_params(
            {
                "first_trial": "defaults",
                "n_trials": 2,
                "architectures": ["unet_resnet18"],
            }
        ).first_trial
        == "defaults"
    )
    with pytest.raises(ValueError, match="first_trial must be one of"):
        SweepConfig(first_trial="best")
    with pytest.raises(ValueError, match=r"outside: lr=0.002 \(space \[0.01, 0.1\]\)"):
        SweepConfig(first_trial="defaults", lr=(0.01, 0.1)).first_trials(base)
    with pytest.raises(ValueError, match="batch_size=8"):
        SweepConfig(first_trial="defaults", batch_size=(4, 16)).first_trials(base)


@pytest.mark.slow
def test_sweep_tries_every_architecture_and_resumes(tmp_path):
    data = toy_input(n=16, size=32)
    sweep = SweepConfig(
        n_trials=6,
        storage=f"sqlite:///{tmp_path}/study.db",
        study_name="t",
    )
    base = FitConfig(epochs=1, init="scratch", aug_strength=0.0)
    study = run_sweep(data, base=base, sweep=sweep, progress=False)
    archs = [t.params["architecture"] for t in study.trials[:3]]
    assert archs == list(sweep.architectures)
    assert len(study.trials) == 6
    again = run_sweep(data, base=base, sweep=sweep, progress=False)
    assert len(again.trials) == 6  # resumed: nothing re-run
    more = SweepConfig(n_trials=7, storage=sweep.storage, study_name="t")
    assert len(run_sweep(data, base=base, sweep=more, progress=False).trials) == 7
    with pytest.raises(ValueError, match="was run on other model input"):
        run_sweep(toy_input(n=17, size=32), base=base, sweep=more, progress=False)
    states = {t.state for t in again.trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}


def _trained(data: ModelInput) -> TrainedModel:
    result = fit(FAST, data)
    return TrainedModel(
        state_dict=result.model.state_dict(),
        metadata={
            "architecture": FAST.architecture,
            "class_names": list(NAMES),
            "normalisation": {
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            },
            "input_size": [32, 32],
            "iteration": 0,
            "curves": result.curves,
        },
    )


def test_predictor_scores_and_flip_invariance():
    data = toy_input(n=40)
    model = _trained(data)
    predictor = model.predictor()
    images = list(data.images[-4:])
    preds = predictor.predict(images)
    for pred in preds:
        assert pred.mask.shape == (32, 32)
        assert set(SCORE_NAMES) <= set(pred.scores)
        assert 0.5 <= pred.scores["mean_max_prob"] <= 1.0
        assert pred.scores["frac:background"] + pred.scores[
            "frac:square"
        ] == pytest.approx(1)
    flipped = predictor.predict([np.ascontiguousarray(i[:, ::-1]) for i in images])
    agree = np.mean(
        [
            np.mean(p.mask == f.mask[:, ::-1])
            for p, f in zip(preds, flipped, strict=True)
        ]
    )
    assert agree > 0.9  # a flipped image gives the flipped mask
    with pytest.raises(ValueError, match=r"images\[0\] must be \(H, W, 3\) uint8"):
        predictor.predict([np.zeros((4, 4), np.uint8)])


def test_predictor_resizes_to_the_model_input_size():
    data = toy_input(n=16)
    model = _trained(data).build()
    predictor = Predictor(
        model, class_names=NAMES, mean=(0, 0, 0), std=(1, 1, 1), input_size=(32, 32)
    )
    (pred,) = predictor.predict([np.zeros((48, 40, 3), np.uint8)])
    assert pred.mask.shape == (48, 40)


def test_registry_promoted_row_best_so_far_and_round_trip(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    model = _trained(toy_input(n=16))
    assert promoted_row(lake.read("models")) is None
    register_model(
        lake,
        ModelRecord(
            model, {"a": 1}, "miou", 0.7, {"all": 0.7, "x": 0.5}, True, "first"
        ),
    )
    assert last_rejection(lake, lake.read("models"), 1) == (None, [])  # promoted
    meta2 = {**model.metadata, "iteration": 1}
    other = TrainedModel(model.state_dict, meta2)
    gate = {
        "promoted": False,
        "comparisons": [
            {"slice": "cond:night", "regressed": True},
            {"slice": "all", "regressed": False},
            {"slice": "class:x", "regressed": True},
        ],
    }
    register_model(
        lake,
        ModelRecord(
            other,
            {"a": 2, "gate": gate},
            "miou",
            0.6,
            {"all": 0.6, "x": 0.8},
            False,
            "worse",
        ),
    )
    models = lake.read("models")
    row = promoted_row(models)
    assert row["model_version"] == model.version
    assert best_so_far(models) == {"all": 0.7, "x": 0.5}  # only promoted rows count
    # The last gate (iteration 1) rejected `other`: iteration 2 hears why,
    # iteration 1 itself (a re-run) only sees iteration 0's promotion.
    assert last_rejection(lake, models, 2) == (other.version, ["class:x", "cond:night"])
    assert last_rejection(lake, models, 1) == (None, [])
    assert last_rejection(lake, models.iloc[:0], 5) == (None, [])
    # A card that is gone from the lake: a warning, and nothing to boost.
    lost = models.assign(card_uri="cards/missing.json")
    assert last_rejection(lake, lost, 2) == (other.version, [])
    loaded = load_model(lake, row)
    assert loaded.weights_hash == model.weights_hash
    assert len(pd.unique(models["model_version"])) == 2


def test_instance_input_norm_makes_predictions_brightness_invariant():
    from edgeloop.models import build_model

    torch.manual_seed(0)
    model, _ = build_model("unet_resnet18", 2, pretrained=False, input_norm="instance")
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a = model(x)
        b = model(x * 0.3 - 0.5)  # a darker, shifted copy of the same image
    assert torch.allclose(a, b, atol=1e-3)
    plain, _ = build_model("unet_resnet18", 2, pretrained=False)
    assert plain.input_norm == "dataset"
    with pytest.raises(ValueError, match="input_norm must be one of"):
        build_model("unet_resnet18", 2, pretrained=False, input_norm="batch")
