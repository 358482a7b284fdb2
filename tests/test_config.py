import copy
import os

import pytest
import yaml
from snakemake.utils import validate

SCHEMA = os.path.join(os.path.dirname(__file__), "..", "workflow", "schemas", "config.schema.yaml")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "config.yaml")


def _load():
    with open(CONFIG) as fh:
        return yaml.safe_load(fh)


def test_default_config_is_valid_and_defaults_fill_in():
    cfg = _load()
    validate(cfg, SCHEMA)
    assert cfg["extract"]["batch_size"] == 8
    assert cfg["dataset"]["demo"]["max_size"] == 400
    bare = {}
    validate(bare, SCHEMA)
    assert bare["run"] == "demo" and bare["backbone"]["name"] == "dino_vits16"
    assert bare["dataset"]["image_list"] is None


def test_every_schema_key_has_description_and_default():
    with open(SCHEMA) as fh:
        schema = yaml.safe_load(fh)

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert "default" in sub, f"{path}{key} has no default"
            if sub.get("type") != "object" or "properties" not in sub:
                assert "description" in sub, f"{path}{key} has no description"
            walk(sub, f"{path}{key}.")

    walk(schema, "")


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.__setitem__("shard_size", "big"), "shard_size"),
        (lambda c: c["extract"].__setitem__("long_side", 4.5), "long_side"),
        (lambda c: c["dataset"].__setitem__("name", "imagenet"), "name"),
        (lambda c: c["extract"].__setitem__("store_features", ["x"]), "store_features"),
        (lambda c: c.__setitem__("typo_key", 1), "typo_key"),
        (lambda c: c["backbone"].__setitem__("wieghts", "random"), "wieghts"),
        (lambda c: c["dataset"].__setitem__("image_list", ["a.txt"]), "image_list"),
        (lambda c: c["labels"].__setitem__("n_classes", "many"), "n_classes"),
        (lambda c: c["clustering"].__setitem__("n_categories", 0), "n_categories"),
        (lambda c: c["labels"].__setitem__("auto_range", [2]), "auto_range"),
        (lambda c: c["labels"].__setitem__("auto_range", [2, 300]), "auto_range"),
    ],
)
def test_wrong_types_and_unknown_keys_are_rejected_naming_the_key(mutate, key):
    cfg = copy.deepcopy(_load())
    mutate(cfg)
    with pytest.raises(Exception) as err:
        validate(cfg, SCHEMA)
    assert key in str(err.value)


def test_counts_take_an_integer_or_auto():
    cfg = _load()
    cfg["labels"]["n_classes"] = "auto"
    cfg["clustering"]["n_categories"] = "auto"
    validate(cfg, SCHEMA)
    assert cfg["labels"]["auto_range"] == [2, 50] and cfg["clustering"]["auto_range"] == [2, 50]
    bare = {}
    validate(bare, SCHEMA)  # the defaults stay integers
    assert bare["labels"]["n_classes"] == 20 and bare["clustering"]["n_categories"] == 20


def test_call_with_settings_passes_the_settings_a_function_takes():
    from lcseg_steps.runner.settings import call_with_settings

    def step(x, *, k_image, fg_rule="border", threads=1):
        return x, k_image, fg_rule, threads

    settings = {"k_image": 3, "fg_rule": "attention", "feature": "k", "threads": 4}
    # what the function does not take is left out; what the caller gives wins
    assert call_with_settings(step, 1, settings=settings, threads=2) == (1, 3, "attention", 2)
    with pytest.raises(TypeError):
        call_with_settings(step, 1, settings={"fg_rule": "border"})  # k_image missing
