"""The sanity pass: user mistakes fail before any step, in one block naming the user's line; a run
with the pass is bit-identical to one without it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import quiet_cfg, tiny_data
from tiny_project import build_data, build_model
from trainforge import TrainConfig, Trainer
from trainforge.user_errors import UserCodeError

HERE = Path(__file__).parent


def test_a_run_with_the_sanity_pass_is_bit_identical_to_one_without(tmp_path):
    train, val = build_data()
    models = []
    for name, check in (("on", True), ("off", False)):
        model = build_model()  # has dropout: the pass must not move the RNG
        cfg = TrainConfig.from_dict({**quiet_cfg(tmp_path, max_epochs=2, batch_size=16, sanity_check=check),
                                     "run_dir": str(tmp_path / name)})
        Trainer(model, cfg).fit(train, val)
        models.append(model)
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(20, 8)

    def forward(self, x):
        hidden = self.first(x)  # the user's line the block must name
        return hidden


def test_a_shape_mistake_fails_before_any_step_naming_the_batch_and_the_users_line(tmp_path):
    x, y = tiny_data(n=32, d=19)
    trainer = Trainer(Wide(), TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=1, batch_size=8)))
    with pytest.raises(UserCodeError) as err:
        trainer.fit((x, y))
    text = str(err.value)
    assert "the sanity pass: the first training batch through the model" in text
    assert "batch: (Tensor[8, 19] float32, Tensor[8] int64)" in text
    assert "mat1 and mat2 shapes cannot be multiplied (8x19 and 20x8)" in text
    assert f"{__file__}:" in text and "hidden = self.first(x)" in text
    assert "site-packages" not in text and "trainforge/" not in text.split("in your code:")[1]
    assert trainer.state.counters.step == 0 and len(text.splitlines()) <= 10


def test_a_loss_that_is_not_a_scalar_is_named_with_its_shape(tmp_path):
    x, y = tiny_data(n=32)

    def per_sample_loss(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")

    model = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(UserCodeError, match=r"must return a scalar loss tensor \(or \(loss, metrics\)\), got Tensor\[8\] float32: reduce it"):
        Trainer(model, TrainConfig.from_dict(quiet_cfg(tmp_path, batch_size=8)), task=per_sample_loss).fit((x, y))


def test_cli_reports_user_mistakes_in_one_block_with_exit_2(tmp_path):
    (tmp_path / "proj.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Linear(20, 2)\n"
        "def broken_factory():\n"
        "    raise RuntimeError('no weights here')\n"
        "def data():\n"
        "    return (torch.randn(32, 19), torch.randint(0, 2, (32,))), None\n")
    base = "run_dir: runs/p\nmax_epochs: 1\nbatch_size: 8\ndata: proj:data\nlog: {progress: false, sinks: [jsonl]}\n"
    for model, expect in (("proj:build", "the sanity pass: the first training batch"),
                          ("proj:broken_factory", "building the model with proj:broken_factory()")):
        (tmp_path / "run.yaml").write_text(base + f"model: {model}\n")
        out = subprocess.run([sys.executable, "-m", "trainforge.cli", "train", "run.yaml", "--run-dir", f"runs/{model[5:]}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr
        assert expect in out.stderr and "Traceback" not in out.stderr
        if "factory" in model:
            assert "proj.py:5 in broken_factory" in out.stderr and "no weights here" in out.stderr


def test_model_args_that_do_not_fit_are_a_config_error_not_the_users_bug(tmp_path):
    from trainforge.config import ConfigError
    from trainforge.run import build_parts
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, model="tiny_project:build_model", model_args={"depth": 3},
                                          data="tiny_project:build_data"))
    with pytest.raises(ConfigError, match=r"field `model_args`: tiny_project:build_model does not take \{'depth': 3\}"):
        build_parts(cfg)


@pytest.mark.parametrize("fields, message", [
    ({"task": "clasification"}, r"field `task`: got 'clasification' — unknown task \(did you mean 'classification'\?\)"),
])
def test_a_misspelt_task_is_refused_at_the_door(tmp_path, fields, message):
    from trainforge.config import ConfigError
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(quiet_cfg(tmp_path, **fields))


def test_cuda_on_a_cpu_only_torch_is_refused_before_any_work(tmp_path):
    from trainforge.config import ConfigError
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"field `device`: cuda, but this torch .* use device: auto"):
        Trainer(nn.Linear(2, 2), TrainConfig.from_dict(quiet_cfg(tmp_path, device="cuda")))
    assert not (tmp_path / "run").exists()


def test_an_empty_config_file_is_named(tmp_path):
    from trainforge.config import ConfigError
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"config file .*empty.yaml is empty"):
        TrainConfig.from_file(tmp_path / "empty.yaml")


def test_class_targets_of_shape_b_1_get_the_fix(tmp_path):
    x, y = tiny_data(n=32)
    model = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(UserCodeError, match=r"targets have shape \[8, 1\] for logits \[8, 3\].*y.squeeze\(-1\)"):
        Trainer(model, TrainConfig.from_dict(quiet_cfg(tmp_path, batch_size=8))).fit((x, y[:, None]))


PROJECT = '''import torch
from torch import nn


def model_ok(d=4):
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 2))


def model_that_raises(d=4):
    raise ValueError("width must be even")  # a bug in the user's factory


def model_typeerror(d=4):
    return nn.Linear(d, "8")  # a TypeError inside the factory: not model_args' fault


def data_19():
    return (torch.randn(32, 19), torch.randint(0, 2, (32,))), None


def data_b1():
    return (torch.randn(32, 4), torch.randint(0, 2, (32, 1))), None


def data_ok():
    return (torch.randn(32, 4), torch.randint(0, 2, (32,))), None


def per_sample_loss(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")
'''

MISTAKES = {  # config lines -> what the one block must say (and the user's line, where it is the user's code)
    "factory raises": ("model: {m}:model_that_raises\ndata: {m}:data_ok\n",
                       ["building the model with", "width must be even"], "in model_that_raises"),
    "TypeError inside the factory": ("model: {m}:model_typeerror\ndata: {m}:data_ok\n",
                                     ["building the model with", "TypeError"], "in model_typeerror"),
    "shapes do not fit": ("model: {m}:model_ok\ndata: {m}:data_19\n",
                          ["mat1 and mat2 shapes cannot be multiplied", "batch: (Tensor[8, 19] float32"], None),
    "targets [B, 1]": ("model: {m}:model_ok\ndata: {m}:data_b1\n", ["targets have shape [8, 1]", "squeeze"], None),
    "misspelt task": ("model: {m}:model_ok\ndata: {m}:data_ok\ntask: clasification\n",
                      ["field `task`", "did you mean 'classification'"], None),
    "loss not a scalar": ("model: {m}:model_ok\ndata: {m}:data_ok\ntask: {m}:per_sample_loss\n",
                          ["scalar loss tensor", "got Tensor[8] float32"], None),
    "cuda on a cpu torch": ("model: {m}:model_ok\ndata: {m}:data_ok\ndevice: cuda\n", ["field `device`: cuda"], None),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_each_mistake_through_the_cli_is_one_block_naming_the_culprit(tmp_path, monkeypatch, capsys, case):
    from trainforge.cli import main
    if case == "cuda on a cpu torch" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    module = "proj_" + "".join(ch for ch in case if ch.isalnum())
    (tmp_path / f"{module}.py").write_text(PROJECT)
    lines, expected, user_frame = MISTAKES[case]
    (tmp_path / "run.yaml").write_text("run_dir: runs/r\nmax_epochs: 1\nbatch_size: 8\n"
                                       "log: {progress: false, sinks: [jsonl]}\n" + lines.format(m=module))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "run.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "site-packages" not in err
    for text in expected:
        assert text in err, (text, err)
    if user_frame:
        assert f"{module}.py:" in err and user_frame in err
    if "in your code" in err:  # trainforge's own frames are left out of the user's block
        assert "trainforge/" not in err.split("in your code:")[1].split("(full traceback")[0]
    assert main(["train", "run.yaml", "--run-dir", "runs/r2", "--traceback"]) == 2
    assert "Traceback" in capsys.readouterr().err  # the whole story on request
