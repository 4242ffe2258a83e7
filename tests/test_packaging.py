"""Packaging traps of the package-dir mapping (see DESIGN.md)."""
from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _source_dir(pkg: str, mapping: dict[str, str]) -> Path:
    parts = pkg.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in mapping:
            return ROOT / mapping[head] / Path(*parts[i:])
    raise AssertionError(f"{pkg} has no package-dir entry")


def test_packages_list_matches_folders():
    """A non-editable install silently drops subpackages missing from ``packages``."""
    tool = _pyproject()["tool"]["setuptools"]
    mapping, listed = tool["package-dir"], set(tool["packages"])
    on_disk = set()
    for top, src in mapping.items():
        base = ROOT / src
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            on_disk.add(".".join([top, *rel.parts]) if rel.parts else top)
    assert listed == on_disk, (f"missing from packages: {sorted(on_disk - listed)}; "
                               f"listed without a folder: {sorted(listed - on_disk)}")
    for pkg in listed:
        assert (_source_dir(pkg, mapping) / "__init__.py").exists(), pkg


def test_namespace_does_not_claim_top_level_datasets():
    """Our folder ``datasets/`` installs as ``poselift.datasets``, never as ``datasets``."""
    tool = _pyproject()["tool"]["setuptools"]
    assert all(p == "poselift" or p.startswith("poselift.") for p in tool["packages"])
    mod = importlib.import_module("poselift.datasets")
    assert mod.__name__ == "poselift.datasets"
    assert "poselift.datasets.joints" in sys.modules or importlib.import_module("poselift.datasets.joints")


def test_datasets_import_from_outside_the_repo_root(tmp_path):
    """A Python started elsewhere must not see our ``datasets/`` as a top-level module."""
    code = ("import importlib.util, poselift.datasets.joints as j; "
            "s = importlib.util.find_spec('datasets'); "
            "print(j.H36M17.num_joints, s is None or 'poselift' not in (s.origin or ''))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["17", "True"]


def test_console_scripts_point_at_importable_callables():
    for name, target in _pyproject()["project"]["scripts"].items():
        mod, func = target.split(":")
        assert callable(getattr(importlib.import_module(mod), func)), name


def test_no_conftest_at_repo_root():
    assert not (ROOT / "conftest.py").exists()


def test_torch_is_not_pinned_in_metadata():
    """GPU users must keep their own CUDA torch: the metadata has a floor, no pin."""
    deps = _pyproject()["project"]["dependencies"]
    torch_dep = [d for d in deps if d.startswith("torch")]
    assert torch_dep == ["torch>=2.1"]


def _parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_cli_option_has_help(monkeypatch, capsys):
    """Each console script's --help explains every option (subcommands included)."""
    import argparse

    built = []
    real_parse = argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        built.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    missing = []
    for name, target in _pyproject()["project"]["scripts"].items():
        mod, func = target.split(":")
        built.clear()
        try:
            getattr(importlib.import_module(mod), func)(["--help"])
        except SystemExit:
            pass
        for top in built:
            for p in _parsers(top):
                for act in p._actions:
                    if act.option_strings and act.help is None and act.dest != "help":
                        missing.append(f"{name} ({p.prog}): {act.option_strings}")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real_parse)
    capsys.readouterr()
    assert not missing, missing
