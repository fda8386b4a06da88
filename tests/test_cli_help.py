"""Every CLI argument has help; bare ``diffinv`` prints help; ``--version`` works."""

import argparse

from diffinv.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, path: str = "diffinv"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_argument_of_every_verb_has_help():
    missing = [
        f"{path}: {action.dest}"
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert not missing, missing
    assert {"diffinv sample mri", "diffinv sample ads", "diffinv train mri"} <= {
        p for p, _ in _parsers(build_parser())
    }


def test_bare_command_prints_help_and_version_works(capsys):
    assert main([]) == 0
    assert "usage: diffinv" in capsys.readouterr().out
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.startswith("diffinv ")


def test_plugin_descriptions_are_whole_sentences():
    """Each description is the docstring's whole first paragraph, never a cut line."""
    from diffinv.plugins import available, describe_plugins

    text = describe_plugins()
    for kind in ("solver", "guidance", "search"):
        for name in available(kind):
            line = next(ln for ln in text.splitlines() if ln.startswith(f"  {name} "))
            summary = line.split("  [")[0].strip()
            assert summary.endswith((".", ")")), line
