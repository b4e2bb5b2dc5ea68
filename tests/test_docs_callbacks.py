"""The complete example of docs/callbacks.md runs as written, and does what it says."""

import re
from pathlib import Path

DOC = Path(__file__).parent.parent / "docs" / "callbacks.md"


def test_the_documented_callback_example_runs(tmp_path, monkeypatch, capsys):
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[-1]
    monkeypatch.chdir(tmp_path)  # its run_dir is relative
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    result = namespace["result"]
    out = capsys.readouterr().out
    assert "val/accuracy" in out and "(best" in out
    assert result.history["patience/waited"]  # log_values reached the curves
    if result.stopped_reason.startswith("val/accuracy flat"):
        assert result.summary["epochs_completed"] < 30
    else:
        assert result.stopped_reason == "max_epochs reached (30)"
    assert (tmp_path / "runs" / "callback_example" / "result.json").exists()
