import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.slicing import (
    SlicingConfig,
    assign_splits,
    build_slices,
    class_balance,
    hash_split,
    sampling_weights,
)

CFG = SlicingConfig()


def _labels():
    return pd.DataFrame(
        [
            {
                "image_id": "a",
                "origin": "seed",
                "class_pixels": [90, 10, 0, 0],
                "object_fracs": [0.1],
                "condition_tags": ["night", "sky"],
                "first_iteration": 0,
            },
            {
                "image_id": "b",
                "origin": "human",
                "class_pixels": [99, 0, 0, 1],
                "object_fracs": [0.01, 0.001],
                "condition_tags": [],
                "first_iteration": 2,
            },
            {
                "image_id": "c",
                "origin": "pseudo",
                "class_pixels": [100, 0, 0, 0],
                "object_fracs": [],
                "condition_tags": [],
                "first_iteration": 1,
            },
        ]
    )


def test_slices_follow_the_predicates(class_map):
    slices = build_slices(_labels(), class_map, CFG)
    by_image = slices.groupby("image_id")["slice"].apply(set).to_dict()
    assert by_image["a"] == {
        "all",
        "class:background",
        "class:fighter_jet",
        "size:large",
        "cond:night",
        "cond:sky",
        "iter:0",
    }
    assert by_image["b"] == {
        "all",
        "class:background",
        "class:light_aircraft",
        "size:medium",
        "size:small",
        "iter:2",
    }
    assert by_image["c"] == {"all", "class:background", "iter:1"}


def test_official_split_kept_hash_otherwise_pseudo_train_only():
    images = pd.DataFrame(
        {"image_id": ["a", "b", "c", "d"], "split": ["test", None, None, "val"]}
    )
    labels = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "origin": ["seed", "human", "pseudo", "pseudo"],
        }
    )
    splits = assign_splits(images, labels, CFG).set_index("image_id")
    assert splits.loc["a", ["split", "split_source"]].tolist() == ["test", "official"]
    assert splits.loc["b", "split"] == hash_split("b", CFG)
    assert splits.loc["b", "split_source"] == "hash"
    assert splits.loc["c", "split"] == "train"
    assert splits.loc["d", "split"] == "excluded"


def test_hash_split_follows_the_ratios():
    ids = [f"{i:064x}" for i in range(4000)]
    counts = pd.Series([hash_split(i, CFG) for i in ids]).value_counts(normalize=True)
    assert counts["train"] == pytest.approx(0.7, abs=0.03)
    assert counts["val"] == pytest.approx(0.15, abs=0.03)


@settings(max_examples=50, deadline=None)
@given(
    old=st.sets(
        st.text("0123456789abcdef", min_size=8, max_size=16), min_size=1, max_size=30
    ),
    new=st.sets(st.text("0123456789abcdef", min_size=8, max_size=16), max_size=30),
)
def test_adding_images_never_moves_an_existing_split(old, new):
    def splits(ids):
        ids = sorted(ids)
        images = pd.DataFrame({"image_id": ids, "split": [None] * len(ids)})
        labels = pd.DataFrame({"image_id": ids, "origin": ["human"] * len(ids)})
        return assign_splits(images, labels, CFG).set_index("image_id")["split"]

    before = splits(old)
    after = splits(old | new)
    assert (after.loc[before.index] == before).all()


def test_ratios_must_sum_to_one():
    with pytest.raises(ValueError, match="must sum to 1"):
        SlicingConfig.from_params({"splits": {"ratios": {"train": 0.5, "val": 0.2}}})
    with pytest.raises(ValueError, match="unknown"):
        SlicingConfig.from_params({"families": ["class", "colour"]})
    with pytest.raises(ValueError, match="sampling.scheme"):
        SlicingConfig.from_params({"sampling": {"scheme": "magic"}})


def test_class_balance_frequencies(class_map):
    labels = _labels()
    splits = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "split": ["train", "train", "val"]}
    )
    balance = class_balance(labels, splits, class_map).set_index(["split", "class"])
    assert balance.loc[("train", "fighter_jet"), "pixels"] == 10
    assert balance.loc[("train", "fighter_jet"), "pixel_freq"] == pytest.approx(0.05)
    assert balance.loc[("train", "light_aircraft"), "image_freq"] == 0.5
    assert balance.loc[("all", "background"), "images"] == 3


def test_sampling_weights_favour_rare_slices():
    slices = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "d"],
            "slice": ["class:x", "class:x", "class:x", "class:x", "cond:night"],
        }
    )
    splits = pd.DataFrame({"image_id": list("abcd"), "split": ["train"] * 4})
    w = sampling_weights(slices, splits, CFG).set_index("image_id")
    assert w.loc["d", "rarest_slice"] == "cond:night"
    # night is 4x rarer than class:x, so d weighs 4x the others; mean is 1.
    assert w.loc["d", "weight"] == pytest.approx(4 * w.loc["a", "weight"])
    assert w["weight"].mean() == pytest.approx(1.0)
    uniform = SlicingConfig(sampling_scheme="uniform")
    assert set(sampling_weights(slices, splits, uniform)["weight"]) == {1.0}


def test_sampling_weights_boost_the_slices_the_last_gate_saw_regress():
    slices = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "d", "e"],
            "slice": ["class:x", "class:x", "class:x", "class:x", "cond:night", "x"],
        }
    )
    splits = pd.DataFrame(
        {"image_id": list("abcde"), "split": ["train"] * 4 + ["test"]}
    )
    plain = sampling_weights(slices, splits, CFG).set_index("image_id")
    assert set(plain["boost"]) == {1.0} and set(plain["boosted_by"]) == {""}
    w = sampling_weights(slices, splits, CFG, ["cond:night", "size:small"])
    w = w.set_index("image_id")
    assert list(w.index) == list("abcd")  # test images get no weight
    assert w.loc["d", "boost"] == CFG.regressed_boost == 2.0
    assert w.loc["d", "boosted_by"] == "cond:night"
    assert w.loc["a", "boosted_by"] == ""
    # night was 4x rarer, now also boosted 2x: d weighs 8x the others.
    assert w.loc["d", "weight"] == pytest.approx(8 * w.loc["a", "weight"])
    assert w["weight"].mean() == pytest.approx(1.0)
    # A uniform scheme still boosts; a boost of 1 is off.
    uniform = SlicingConfig(sampling_scheme="uniform")
    u = sampling_weights(slices, splits, uniform, ["cond:night"]).set_index("image_id")
    assert u.loc["d", "weight"] == pytest.approx(2 * u.loc["a", "weight"])
    off = SlicingConfig(sampling_scheme="uniform", regressed_boost=1.0)
    assert set(sampling_weights(slices, splits, off, ["cond:night"])["weight"]) == {1.0}
    with pytest.raises(ValueError, match="regressed_boost must be a number >= 1"):
        SlicingConfig.from_params({"sampling": {"regressed_boost": 0.5}})
