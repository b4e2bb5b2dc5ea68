"""Tabular specs: feature columns stacked into x, a label column into y, through a whole run."""

import pytest
import torch

from helpers import quiet_cfg
from trainforge import TrainConfig, Trainer
from trainforge.data.errors import DataError
from trainforge.data.spec import build_data


def write_table(path, rows=60, label_kind="int"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, generator=g)
    with open(path, "w") as f:
        f.write("a,b,c,note,target\n")
        for i, (a, b, c) in enumerate(x.tolist()):
            cls = int(a + b > 0)
            target = {"int": cls, "float": a - b, "text": ["no", "yes"][cls]}[label_kind]
            f.write(f"{a},{b},{c},row{i},{target}\n")
    return path


def test_features_and_label_give_x_and_y_of_the_right_dtypes(tmp_path):
    path = write_table(tmp_path / "t.csv")
    train, val = build_data({"path": str(path), "features": ["a", "b", "c"], "label": "target", "val_fraction": 0.25})
    x, y = train[0]
    assert x.dtype == torch.float32 and x.shape == (3,) and y.dtype == torch.int64
    assert len(train) == 45 and len(val) == 15
    reg, _ = build_data({"path": str(write_table(tmp_path / "r.csv", label_kind="float")),
                         "features": ["a", "b"], "label": "target"})
    assert reg[0][1].dtype == torch.float32 and reg.feature_names == ["a", "b"]


def test_text_labels_are_numbered_by_sorted_class_name(tmp_path):
    path = write_table(tmp_path / "t.csv", label_kind="text")
    table, _ = build_data({"path": str(path), "features": ["a", "b"], "label": "target"})
    assert table.classes == ["no", "yes"] and set(table.tensors[1].tolist()) == {0, 1}


@pytest.mark.parametrize("spec, message", [
    ({"features": "all but label", "label": "target"}, "feature column 'note' is not numeric"),
    ({"features": ["a", "zz"], "label": "target"}, r"no feature column\(s\) \['zz'\]"),
    ({"features": ["a"], "label": "nope"}, "no label column 'nope'"),
    ({"features": ["a"]}, "features needs label"),
    ({"features": "a", "label": "target"}, "features must be a list of column names"),
])
def test_bad_tabular_specs_name_the_column(tmp_path, spec, message):
    path = write_table(tmp_path / "t.csv")
    with pytest.raises(DataError, match=message):
        build_data({"path": str(path), **spec})


def test_a_classifier_trains_on_a_csv_table_from_the_config(tmp_path):
    path = write_table(tmp_path / "t.csv", rows=200)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=15, batch_size=20, optimizer={"lr": 0.03},
                                          data={"path": str(path), "features": ["a", "b", "c"], "label": "target",
                                                "val_fraction": 0.2}))
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    result = Trainer(model, cfg, task="classification").fit()
    assert result.history["val/accuracy"][-1] > 0.85


def test_a_data_function_gets_the_runs_seed_when_it_asks_for_it(tmp_path, monkeypatch):
    import sys
    import types
    from trainforge.run import _data
    seen = {}
    module = types.ModuleType("seeded_data_mod")

    def build(n=8, seed=None):
        seen["seed"], seen["n"] = seed, n
        return torch.zeros(n, 2), None

    module.build = build
    monkeypatch.setitem(sys.modules, "seeded_data_mod", module)
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, seed=7, data="seeded_data_mod:build", data_args={"n": 4}))
    _data(cfg)
    assert seen == {"seed": 7, "n": 4}
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, seed=7, data="seeded_data_mod:build", data_args={"seed": 1}))
    _data(cfg)
    assert seen["seed"] == 1  # data_args wins
