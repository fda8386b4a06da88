"""Plug-in names and options in the config are checked when it is validated, not inside the jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from diffinv import plugins
from diffinv.config import load_config, validate_config
from diffinv.errors import ConfigError
from diffinv.plugins import BUILTINS, check_options

ROOT = Path(__file__).resolve().parents[1]
WHERE = "mri.sampling.methods[1]"


class Fake:
    """A test plug-in with a Literal, a tuple, an untyped option and one only Python can give."""

    def __init__(
        self,
        schedule: Any,
        variant: Literal["a", "b"] = "a",
        pair: tuple[int, int] = (1, 2),
        free=None,
        obj: Path = ROOT,
    ) -> None:
        pass


class Open:
    """A test plug-in whose ``**kwargs`` go nowhere known: anything goes."""

    def __init__(self, schedule: Any, **kwargs: Any) -> None:
        pass


def refused(kind: str, name: str, options: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        check_options(kind, name, options, WHERE)
    message = str(info.value)
    assert "\n" not in message and "(fix: " in message
    return message


@pytest.mark.parametrize("kind,name", [(k, n) for k, names in BUILTINS.items() for n in names])
def test_every_builtin_takes_its_defaults_and_refuses_a_bogus_key(kind, name):
    check_options(kind, name, {}, WHERE)
    message = refused(kind, name, {"bogus_key": 1})
    assert message.startswith(f"{WHERE}.{kind}_options.bogus_key: unknown option of {kind} {name!r}")


def test_unknown_plugin_lists_the_installed_ones():
    message = refused("guidance", "dpss", {})
    assert (
        message.startswith(f"{WHERE}.guidance: guidance 'dpss' is not installed")
        and "dds, diffpir, dps" in message
    )


def test_misspelled_key_lists_valid_keys_with_types():
    message = refused("guidance", "dds", {"cg_stepz": 5})
    assert message.startswith(f"{WHERE}.guidance_options.cg_stepz: unknown option")
    assert "cg_steps (int), reg (float), clip (float | None)" in message


@pytest.mark.parametrize(
    "kind,name,options,expected",
    [
        ("solver", "ddim", {"eta": "high"}, "solver_options.eta: 'high' is not of type float"),
        ("guidance", "dds", {"cg_steps": "many"}, "guidance_options.cg_steps: 'many' is not of type int"),
        ("guidance", "dds", {"cg_steps": True}, "guidance_options.cg_steps: True is not of type int"),
        ("guidance", "dds", {"reg": False}, "guidance_options.reg: False is not of type float"),
        ("guidance", "dds", {"cg_steps": 2.5}, "guidance_options.cg_steps: 2.5 is not of type int"),
        ("solver", "unipc", {"corrector": "yes"}, "solver_options.corrector: 'yes' is not of type bool"),
        ("solver", "s3", {"plan": [1]}, "solver_options.plan: [1] is not of type dict[str, Any] | None"),
        ("solver", "dc_solver", {"ratios": [1.0, "x"]}, "solver_options.ratios: [1.0, 'x'] is not of type"),
        ("search", "smc", {"reward": 3}, "search_options.reward: 3 is not of type str | Reward | None"),
    ],
)
def test_wrong_value_types_are_refused(kind, name, options, expected):
    assert refused(kind, name, options).startswith(f"{WHERE}.{expected}")


@pytest.mark.parametrize(
    "kind,name,options",
    [
        ("solver", "ddim", {"eta": 1}),
        ("guidance", "dds", {"clip": None, "reg": 0}),
        ("solver", "dc_solver", {"ratios": [1, 0.5], "cache": None}),
        ("solver", "fitted_lms", {"warps": [1.0, 0.5], "fit": {"ridge": 1e-3}}),
        ("solver", "mrs", {"mu": [0.0, 1.0]}),
        ("solver", "mrs", {"mu": "image"}),  # float | Sequence | Tensor: the Tensor cannot be checked
        ("search", "dts_star", {"rollouts": 8, "seed": 3, "reward": "data_consistency"}),
        ("solver", "timeshift", {"base": "ddim", "base_options": {"eta": 1}}),
    ],
)
def test_valid_options_pass(kind, name, options):
    check_options(kind, name, options, WHERE)


def test_python_object_parameters_are_not_options():
    assert "small (" not in refused("solver", "tstitch", {"small": None})
    assert refused("search", "smc", {"operator": None}).startswith(
        f"{WHERE}.search_options.operator: unknown"
    )


def test_nested_base_options_are_checked_against_the_base_solver():
    message = refused("solver", "timeshift", {"base": "ddim", "base_options": {"eta": "high"}})
    assert message.startswith(f"{WHERE}.solver_options.base_options.eta: 'high' is not of type float")
    message = refused("solver", "dualfast", {"base_options": {"eta": 1.0}})  # default base dpmpp_2m
    assert message.startswith(f"{WHERE}.solver_options.base_options.eta: unknown option of solver 'dpmpp_2m'")
    message = refused("solver", "tstitch", {"base": "ddimm"})
    assert message.startswith(f"{WHERE}.solver_options.base: solver 'ddimm' is not installed")
    message = refused(
        "solver",
        "timeshift",
        {"base": "dualfast", "base_options": {"base": "ddim", "base_options": {"x": 1}}},
    )
    assert message.startswith(f"{WHERE}.solver_options.base_options.base_options.x: unknown option")


def test_literal_tuple_class_and_open_kwargs(monkeypatch):
    monkeypatch.setitem(BUILTINS["solver"], "fake", f"{__name__}:Fake")
    monkeypatch.setitem(BUILTINS["solver"], "open", f"{__name__}:Open")
    check_options("solver", "fake", {"variant": "b", "pair": [3, 4], "free": {"any": "thing"}}, WHERE)
    message = refused("solver", "fake", {"variant": "c"})
    assert message.startswith(f"{WHERE}.solver_options.variant: 'c' is not of type Literal['a', 'b']")
    assert "pair: [1, 2, 3] is not" in refused("solver", "fake", {"pair": [1, 2, 3]})
    assert "obj: unknown option" in refused("solver", "fake", {"obj": "x"})  # a Path is no YAML value
    check_options("solver", "open", {"whatever": object()}, WHERE)
    assert plugins.plugin_options("solver", Open) is None


def methods_config(*methods: dict[str, Any]) -> dict[str, Any]:
    return {"mri": {"sampling": {"methods": list(methods)}}}


def test_validate_config_names_the_key_path_of_a_bad_option():
    config = methods_config(
        {"solver": "dpmpp_2m", "guidance": "dds"},
        {"solver": "ddim", "guidance": "dds", "guidance_options": {"cg_stepz": 5}},
    )
    with pytest.raises(
        ConfigError, match=r"^my\.yaml: mri\.sampling\.methods\[1\]\.guidance_options\.cg_stepz: "
    ):
        validate_config(config, "my.yaml")


def test_validate_config_checks_the_ads_method():
    config = {"ads": {"method": {"solver": "ddim", "solver_options": {"eta": "high"}, "guidance": "dds"}}}
    with pytest.raises(
        ConfigError, match=r"^config: ads\.method\.solver_options\.eta: 'high' is not of type"
    ):
        validate_config(config)


def test_duplicate_method_names_are_refused_naming_both():
    config = methods_config(
        {"solver": "ddim", "guidance": "dds"},
        {"solver": "ddim", "guidance": "dps"},
        {"solver": "ddim", "guidance": "dds", "solver_options": {"eta": 1.0}},
    )
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config: mri.sampling.methods[2]: method name 'ddim-dds' is also that of")
    assert "mri.sampling.methods[0]" in message


@pytest.mark.parametrize(
    "path",
    [
        "config/config.yaml",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config/examples").glob("*.yaml")),
    ]
    + ["tests/integration/tiny.yaml"],
)
def test_shipped_configs_still_validate(path):
    load_config(ROOT / path)
