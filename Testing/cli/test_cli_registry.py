"""The command registry and option parsing, in process (fast)."""
from __future__ import annotations

import argparse
import sys
import types

import pytest

from cli_helpers import learngn


def test_registry_picks_up_a_module_that_follows_the_protocol(monkeypatch, capsys):
    import learngn.cli as cli

    module = types.ModuleType("learngn.cli.hello")
    module.add_parser = lambda subparsers: subparsers.add_parser("hello", help="say hello")
    module.run = lambda args: print("hello from", args.command) or 7
    monkeypatch.setitem(sys.modules, "learngn.cli.hello", module)
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, "hello", "not_written_yet"))
    assert cli.main(["hello"]) == 7
    assert "hello from hello" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = capsys.readouterr().out
    assert all(f"    {name} " in listed for name in ("register", "batch", "demo", "presets", "hello"))


def test_set_values_take_the_type_of_the_setting():
    from learngn import InputError
    from learngn.cli.options import settings_overrides

    args = argparse.Namespace(setting_iterations=5, settings=[("working_spacing", "none"), ("momentum", "0.7"),
                                                              ("features", "mind, intensity"), ("iterations", "5")])
    assert settings_overrides(args) == {"iterations": 5, "working_spacing": None, "momentum": 0.7,
                                        "features": ("mind", "intensity")}
    with pytest.raises(InputError, match="given twice"):
        settings_overrides(argparse.Namespace(setting_iterations=5, settings=[("iterations", "6")]))


def test_presets_are_listed_with_descriptions():
    from learngn import list_presets

    for args in (["presets"], ["register", "--list-presets"]):
        run = learngn(*args)
        assert run.returncode == 0, run.stderr
        for name, description in list_presets().items():
            assert f"{name}  " in run.stdout and description in run.stdout


def test_register_help_lists_the_contract_options():
    run = learngn("register", "--help")
    for option in ("--fixed-mask", "--moving-mask", "--fixed-segmentation", "--moving-segmentation", "--preset",
                   "--device", "--initial-transform", "--iterations", "--grid-stride", "--regularisation",
                   "--prealign", "--levels", "--working-spacing", "--solver", "--set", "--progress", "--overwrite",
                   "--field-format"):
        assert option in run.stdout, option


def test_the_installed_package_carries_the_shipped_models():
    """`pip install .` must ship Resources/Models as learngn._models, or its learned presets are missing."""
    import json
    import site
    from importlib.metadata import distributions
    from pathlib import Path

    # in site-packages only: a build leaves learngn.egg-info in the source tree, which is on sys.path here
    found = [d for d in distributions(path=site.getsitepackages()) if d.metadata["Name"] == "learngn"]
    if not found:
        pytest.skip("learngn is not installed; the tests run from the source tree")
    dist = found[0]
    if json.loads(dist.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable"):
        pytest.skip("learngn is installed in editable mode: it reads the models from the checkout")
    root = Path(__file__).resolve().parents[2]
    shipped = [f"learngn/_models/{p.name}" for p in sorted((root / "Resources" / "Models").iterdir())
               if p.suffix in (".json", ".pt")]
    # pyproject.toml lists the packages by hand: a new subpackage must not be left out either
    source = root / "LearnGNSlicer"
    modules = [p.relative_to(source).as_posix() for p in sorted((source / "learngn").rglob("*.py"))]
    installed = {Path(str(f)).as_posix() for f in dist.files or []}
    missing = [name for name in shipped + modules if name not in installed]
    assert shipped and modules and not missing, f"missing from the installed package: {missing}"

