"""The one importer of 'module:name' references (models, tasks, data filters)."""

from __future__ import annotations

import pytest

from trainforge.data import DataError, build_data
from trainforge.importing import import_object
from trainforge.tasks import import_object as tasks_import_object


def test_imports_modules_attributes_and_dotted_names():
    assert import_object("os.path:join") is __import__("os").path.join
    assert import_object("collections:OrderedDict.fromkeys") == __import__("collections").OrderedDict.fromkeys
    assert tasks_import_object is import_object  # kept importable where run.py finds it


@pytest.mark.parametrize("ref, message", [
    ("os.path", r"'os.path' must look like 'package.module:name'"),
    (":join", r"must look like"),
    ("os:", r"must look like"),
    (42, r"42 must look like"),
    ("no_such_module_xyz:fn", r"cannot import module 'no_such_module_xyz' \(from 'no_such_module_xyz:fn'\).*PYTHONPATH"),
    ("os.path:jion", r"module 'os.path' has no attribute 'jion'.*did you mean 'join'"),
    ("collections:OrderedDict.nope", r"has no attribute 'OrderedDict.nope' \('collections.OrderedDict' has no 'nope'"),
])
def test_errors_name_the_reference_and_what_is_missing(ref, message):
    with pytest.raises(ValueError, match=message):
        import_object(ref)


def test_callable_only():
    assert import_object("os:sep") == __import__("os").sep
    with pytest.raises(ValueError, match=r"'os:sep' is a str, not a callable"):
        import_object("os:sep", callable_only=True)


def test_data_spec_filters_use_it(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"x": 1}\n')
    with pytest.raises(DataError, match=r"cannot import filter \(module 'os' has no attribute 'nope'"):
        build_data({"path": str(path), "filter": "os:nope"})
    with pytest.raises(DataError, match=r"cannot import filter \('os:sep' is a str, not a callable"):
        build_data({"path": str(path), "filter": "os:sep"})
