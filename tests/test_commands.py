"""What every command shares: a RunConfig field is the same typed option in each (config.add_options), written
back as flags the same way (config.flags), and errors end a command alike (records.command). CPU, seconds."""

import argparse
import dataclasses

import pytest

from analysis import collect, make_tables
from repro import bench, finetune, launch, records, status, sweep, train
from repro.config import ConfigError, RunConfig, field_names, flags

COMMANDS = {"launch": launch.parser, "status": status.parser, "sweep": sweep.parser}


def field_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest in field_names()}


def form(action: argparse.Action) -> tuple:
    """All of an option but its help, which a command may word for itself."""
    return action.option_strings, type(action), action.type, action.choices, action.nargs, action.default


def test_every_command_takes_the_same_typed_options_for_the_same_runconfig_fields():
    trainer = field_options(train.parser())
    assert list(trainer) == field_names(), "repro.train takes every field"
    for f in dataclasses.fields(RunConfig):
        action = trainer[f.name]
        if isinstance(f.default, bool):
            assert isinstance(action, argparse.BooleanOptionalAction), f.name
        else:
            assert action.type is (float if isinstance(f.default, tuple) else type(f.default)), f.name
            assert action.choices == (f.metadata["choices"] or None), f.name
    assert trainer["epochs"].type is int and trainer["pool"].choices == ("avg", "flex", "flex-softmax")
    for command, parser in COMMANDS.items():
        options = field_options(parser())
        assert options, command
        assert {name: form(a) for name, a in options.items()} == {name: form(trainer[name]) for name in options}, \
            command


def test_flags_are_read_back_typed_as_the_values_they_were_written_from():
    values = {"sac": True, "augment": False, "sac_weights": [0.2, 0.3, 0.5], "lr": 0.05, "epochs": 3,
              "pool": "flex", "data_root": "/data"}
    assert flags(values)[:3] == ["--sac", "--no-augment", "--sac-weights"]
    parsed = vars(train.parser().parse_args(flags(values)))
    assert {name: parsed[name] for name in values} == values
    assert type(parsed["epochs"]) is int and type(parsed["lr"]) is float


@pytest.mark.parametrize("command,argv", [
    (train, ["--pool", "max"]), (launch, ["table1", "--compile", "fast"]), (status, ["table1", "--seeds", "x"]),
    (sweep, ["smoke", "--wandb", "loud"]), (bench, ["--packing", "x"]), (finetune, ["--steps", "0"]),
], ids=lambda x: getattr(x, "__name__", ""))
def test_a_bad_option_is_bad_input_in_every_command_one_line_and_exit_2(capsys, command, argv):
    assert command.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument ") and err.endswith(" (see --help)\n") and err.count("\n") == 1, err


def test_an_analysis_command_ends_alike(capsys):
    with pytest.raises(SystemExit) as exit:
        collect.run_cli(lambda: make_tables.main(["--format", "html"]))
    assert exit.value.code == 2 and capsys.readouterr().err.startswith("error: argument --format: invalid choice")


class Odd(Exception):
    pass


@pytest.mark.parametrize("error,extra,code,line", [
    (ConfigError("bad value"), {}, 2, "error: bad value"),
    (Odd("bad input"), {"bad_input": (Odd,)}, 2, "error: bad input"),
    (records.WriteError("cannot write x: disk full"), {}, 1, "error: cannot write x: disk full"),
    (Odd("a crash"), {"faults": (Odd,)}, 1, "error: a crash"),
    (records.Stopped("SIGTERM"), {}, 143, "stopped: SIGTERM"),
])
def test_commands_map_errors_to_exit_codes_in_one_place(capsys, error, extra, code, line):
    def body():
        raise error

    assert records.command(body, **extra) == code == (records.STOPPED_EXIT if code == 143 else code)
    assert capsys.readouterr().err == line + "\n"
    assert records.command(lambda: None) == 0 and records.command(lambda: 3) == 3
    with pytest.raises(Odd):
        records.command(lambda: (_ for _ in ()).throw(Odd("not ours")))
