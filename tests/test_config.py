"""Every config field rejects a bad value with a message naming it; files and overrides load."""

import pytest

from trainforge import ConfigError, TrainConfig

BAD_VALUES = [
    ("seed", -1), ("max_epochs", 0), ("max_steps", 0), ("batch_size", 0), ("num_workers", -2), ("device", "tpu"),
    ("precision", "8-mixed"), ("task", 3), ("compile", "sometimes"),
    ("optimizer.name", "lion"), ("optimizer.lr", 0), ("optimizer.weight_decay", -0.1), ("optimizer.betas", [0.9, 1.5]),
    ("optimizer.momentum", 1.0), ("optimizer.eps", 0),
    ("schedule.name", "exp"), ("schedule.warmup", 1.5), ("schedule.min_lr_ratio", 2), ("schedule.warmup_steps", -1),
    ("grad.accumulate", 0), ("grad.clip_norm", -1), ("grad.clip_value", 0), ("grad.non_finite", "ignore"),
    ("grad.rollback_lr_factor", 0), ("grad.max_rollbacks", -1),
    ("checkpoint.every_epochs", 0), ("checkpoint.every_steps", 0), ("checkpoint.keep_last", 0), ("checkpoint.mode", "up"),
    ("checkpoint.async_save", "maybe"),
    ("validation.every_epochs", 0), ("validation.max_batches", 0),
    ("log.level", "loud"), ("log.every_steps", 0), ("log.sinks", ["neptune"]), ("log.profile_steps", -1),
    ("distributed.strategy", "horovod"),
    ("early_stopping.patience", 0), ("early_stopping.mode", "sideways"),
    ("gate", {"eval/edge_compliance": "about 0.9"}),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f for f, _ in BAD_VALUES])
def test_bad_value_names_the_field(field, value):
    data: dict = {}
    node = data
    parts = field.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(data)
    message = str(err.value)
    assert f"`{field}" in message, message
    assert message.count("\n") == 0  # one message, one line


def test_typo_in_yaml_names_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_epochs: 3\noptimizer:\n  name: adamw\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key `optimizer.lerning_rate`.*lr"):
        TrainConfig.from_file(path)


def test_typo_at_top_level(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown key `max_epoch`"):
        TrainConfig.from_file(path)


def test_yaml_and_toml_with_dotted_overrides(tmp_path):
    yml = tmp_path / "a.yaml"
    yml.write_text("max_epochs: 3\noptimizer: {name: sgd, lr: 0.1, momentum: 0.9}\ngrad: {clip_norm: 1.0}\n")
    cfg = TrainConfig.from_file(yml, overrides=["optimizer.lr=1e-3", "grad.clip_norm=null", "log.sinks=[jsonl]"])
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.name == "sgd" and cfg.grad.clip_norm is None
    assert cfg.log.sinks == ["jsonl"]
    toml = tmp_path / "a.toml"
    toml.write_text('max_steps = 100\nprecision = "bf16-mixed"\n[optimizer]\nlr = 0.01\n')
    cfg = TrainConfig.from_file(toml, overrides=["schedule.name=linear"])
    assert cfg.max_steps == 100 and cfg.precision == "bf16-mixed" and cfg.schedule.name == "linear"


@pytest.mark.parametrize("text,match", [
    ("max_epochs: [1, 2", "not valid YAML"),
    ("- a\n- b\n", "must hold a mapping"),
])
def test_broken_files(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_file(path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_file(tmp_path / "nope.yaml")
    other = tmp_path / "cfg.ini"
    other.write_text("x")
    with pytest.raises(ConfigError, match="unknown extension"):
        TrainConfig.from_file(other)


@pytest.mark.parametrize("override,match", [("optimizer.lr", "key=value"), ("=3", "empty key"),
                                            ("max_epochs.x=1", "not a section"), ("optimizer.lr=-5", "optimizer.lr")])
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({"max_epochs": 1}, overrides=[override])


def test_budget_required():
    with pytest.raises(ConfigError, match="max_epochs or max_steps"):
        TrainConfig.from_dict({"max_epochs": None})


def test_resolved_config_round_trips(tmp_path):
    cfg = TrainConfig.from_dict({"max_steps": 5, "gate": {"val/accuracy": "> 0.9"}})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert TrainConfig.from_file(path) == cfg


def test_trainforge_config_prints_every_field_with_its_description(capsys, tmp_path):
    import yaml
    from trainforge.cli import main
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "lr: 0.0003  # peak learning rate" in text
    loaded = yaml.safe_load(text)  # comments aside, it is the config itself
    assert TrainConfig.from_dict(loaded) == TrainConfig()
    (tmp_path / "c.yaml").write_text("recipe: digits\n")
    assert main(["config", str(tmp_path / "c.yaml"), "--set", "seed=4"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["recipe"] == "digits" and resolved["seed"] == 4
    assert main(["config", str(tmp_path / "missing.yaml")]) == 2


def test_every_config_field_has_a_description():
    from pydantic import BaseModel

    def missing(model, prefix=""):
        for name, field in model.model_fields.items():
            if not field.description:
                yield prefix + name
            for arg in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(arg, type) and issubclass(arg, BaseModel) and name != "schedules":
                    yield from missing(arg, f"{prefix}{name}.")

    assert list(missing(TrainConfig)) == []
