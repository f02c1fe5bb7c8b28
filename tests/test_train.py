import json

import pytest
import torch

from repro import layout, records, train
from repro.config import ConfigError, RunConfig
from tests.helpers import TINY_LR

TINY = {"dataset": "synthetic", "train_subset": 256, "test_subset": 128, "batch_size": 64, "lr": TINY_LR,
        "wandb": "disabled"}


def config(tmp_path, **changes) -> RunConfig:
    return RunConfig(**{**TINY, "results_dir": str(tmp_path / "results"), **changes})


def test_short_run_learns_and_writes_a_complete_record(tmp_path):
    cfg = config(tmp_path, epochs=4, pool="flex", sac=True, reg=1e-3, dropout=0.25, wandb="offline")
    record = train.run(cfg)
    losses = [h["train_loss"] for h in record["history"]]
    assert losses[-1] < losses[0] * 0.7
    assert record["status"] == "completed" and record["metrics"]["accuracy"] > 0.3
    saved = json.loads(layout.record_path(cfg).read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["config"] == cfg.to_dict() | {"sac_weights": list(cfg.sac_weights)}
    assert len(saved["metrics"]["head_accuracies"]) == 3
    assert saved["metrics"]["head_accuracies"][-1] == saved["metrics"]["accuracy"]
    assert [h["epoch"] for h in saved["history"]] == [1, 2, 3, 4]
    assert saved["timing"]["images_per_s"] > 0 and saved["env"]["torch"]
    assert set(saved["flexpool"]) == {"pool", "heads.0.pool", "heads.1.pool"}
    assert saved["flexpool"]["pool"]["shape"] == [64, 8, 8]


def test_completed_run_is_not_trained_again(tmp_path):
    cfg = config(tmp_path, epochs=1)
    first = train.run(cfg)
    assert train.run(cfg) == json.loads(json.dumps(first))


def stop_after_first_epoch(entry):
    if entry["epoch"] == 1:
        raise KeyboardInterrupt  # what a preempted job sees


def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    whole = train.run(config(tmp_path / "a", epochs=3, pool="flex", dropout=0.25))

    broken = config(tmp_path / "b", epochs=3, pool="flex", dropout=0.25)
    with pytest.raises(KeyboardInterrupt):
        train.run(broken, on_epoch=stop_after_first_epoch)
    assert not layout.record_path(broken).exists()
    saved = records.load_checkpoint(layout.checkpoint_path(broken))["optimizer"]["param_groups"]
    assert {type(group["lr"]) for group in saved} == {float}  # the checkpoint's format: no step's tensor
    resumed = train.run(broken)
    for a, b in zip(whole["history"], resumed["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["eval_accuracy"] == b["eval_accuracy"]


def test_a_run_resumed_in_another_precision_says_it_trained_in_both(tmp_path):
    """precision auto follows the machine, so a run resumed on another may change it: its record must say so."""
    fp32 = config(tmp_path, epochs=2, precision="fp32")
    with pytest.raises(KeyboardInterrupt):
        train.run(fp32, on_epoch=stop_after_first_epoch)
    record = train.run(fp32.replace(precision="bf16"))  # the same run: precision is not part of its id
    assert [h["precision"] for h in record["history"]] == ["fp32", "bf16"]
    assert record["env"]["precision"] == "fp32+bf16"
    assert train.run(config(tmp_path / "one", epochs=1, precision="fp32"))["env"]["precision"] == "fp32"


def test_a_run_resumed_with_other_threads_keeps_each_epochs_count(tmp_path):
    """The threads change a CPU run's last digits, and a resumed run may get another share of the cores."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(KeyboardInterrupt):
            train.run(config(tmp_path, epochs=2), on_epoch=stop_after_first_epoch)
        torch.set_num_threads(2)
        record = train.run(config(tmp_path, epochs=2))
    finally:
        torch.set_num_threads(before)
    assert [h["threads"] for h in record["history"]] == [1, 2]
    assert record["env"]["threads"] == 2


def test_corrupt_checkpoint_restarts_from_scratch(tmp_path, capsys):
    cfg = config(tmp_path, epochs=1)
    path = layout.checkpoint_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    assert train.run(cfg)["status"] == "completed"
    assert "corrupt checkpoint" in capsys.readouterr().err


def one_group_fewer(cfg, state):
    state["optimizer"]["param_groups"].pop()
    return state


@pytest.mark.parametrize("spoil", [
    lambda cfg, state: [1, 2, 3],  # a .pt file, but no checkpoint's dict
    lambda cfg, state: {"run_id": cfg.run_id, "history": state["history"]},  # no model
    one_group_fewer,  # an optimizer built otherwise
])
def test_a_checkpoint_that_is_not_this_runs_is_a_warning_and_a_fresh_start(tmp_path, capsys, spoil):
    cfg = config(tmp_path, epochs=2)
    other = cfg.replace(seed=1)  # other weights: a resume that took any of them would not train as a fresh run
    model = train.make_model(other, train.torch.device("cpu"))
    train.save(cfg, model, train.make_optimizer(other, model), [{"epoch": 1, "wall_s": 1.0}])
    path = layout.checkpoint_path(cfg)
    train.torch.save(spoil(cfg, records.load_checkpoint(path)), path)
    record = train.run(cfg)
    fresh = train.run(config(tmp_path / "fresh", epochs=2))
    assert record["status"] == "completed"
    assert [h["train_loss"] for h in record["history"]] == pytest.approx([h["train_loss"] for h in fresh["history"]])
    err = capsys.readouterr().err
    assert f"warning: {path}: " in err and f"starting run {cfg.run_id} from scratch" in err and "Traceback" not in err


def test_a_non_finite_loss_ends_the_run_diverged_at_that_epoch(tmp_path):
    cfg = config(tmp_path, epochs=3, lr=1e12, optimizer="sgd")
    record = train.run(cfg)
    assert record["status"] == "diverged" and record["diverged"]["epoch"] == 1
    assert record["diverged"]["train_loss"] in ("nan", "inf") and record["diverged"]["rule"] == records.DIVERGED_RULE
    assert record["history"] == [] and record["flexpool"] == {}
    json.loads(layout.record_path(cfg).read_text(), parse_constant=pytest.fail)  # no NaN: strict JSON


def losses_from(monkeypatch, start: float, epochs: list[float]) -> None:
    """Training that reports these losses: `start` for the first step, then each epoch's mean in turn."""
    real = train.train_epoch

    def reported(config, step, model, lrs, epoch, n):
        _, accuracy, _ = real(config, step, model, lrs, epoch, n)
        return train.torch.tensor(epochs[epoch]), accuracy, train.torch.tensor(start)

    monkeypatch.setattr(train, "train_epoch", reported)


def test_a_finite_loss_far_above_the_start_is_diverged_not_completed(tmp_path, capsys, monkeypatch):
    """A run that ends above twice the loss it started from learned nothing (the issue's case: lr 1e6 ended at a
    loss of about 1.5e12; how far a real run climbs before it overflows depends on the machine)."""
    losses_from(monkeypatch, start=3.0, epochs=[40.0, 1.5e12])
    argv = ["--dataset", "synthetic", "--epochs", "2", "--train-subset", "256", "--test-subset", "128",
            "--batch-size", "64", "--wandb", "disabled", "--results-dir", str(tmp_path)]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("diverged: training loss ") and "in epoch 2" in err and err.count("\n") == 1
    (path,) = (tmp_path / "runs").rglob("*.json")
    record = records.read_record(path)
    assert record["status"] == "diverged" and record["diverged"]["train_loss"] == pytest.approx(1.5e12)
    assert record["history"][0]["start_loss"] == 3.0
    assert record["metrics"]["accuracy"] is not None  # what it did, kept
    loss = record["diverged"]["train_loss"]
    assert records.record_state(record) == ("diverged", f"training loss {loss} in epoch 2")


@pytest.mark.parametrize("start, last, status", [
    (5.0, 6.0, "completed"),  # started above ln(10) (a small network may): judged against where it started
    (5.0, 10.5, "diverged"),
    (1.0, 4.0, "completed"),  # started below a uniform guess: twice ln(10), 4.6, is the bound
    (1.0, 4.7, "diverged"),
])
def test_a_run_is_judged_against_the_loss_it_started_from(tmp_path, monkeypatch, start, last, status):
    losses_from(monkeypatch, start=start, epochs=[last])
    assert train.run(config(tmp_path, epochs=1))["status"] == status


def test_a_run_whose_code_raises_leaves_a_failed_record(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the training step")

    monkeypatch.setattr(train, "train_epoch", broken)
    cfg = config(tmp_path, epochs=2)
    with pytest.raises(RuntimeError, match="a bug"):
        train.run(cfg)
    record = records.read_record(layout.record_path(cfg))
    assert record["status"] == "failed" and record["error"] == "RuntimeError: a bug in the training step"


def test_on_epoch_can_stop_a_run_as_pruned(tmp_path):
    record = train.run(config(tmp_path, epochs=3), on_epoch=lambda entry: entry["epoch"] == 2)
    assert record["status"] == "pruned" and len(record["history"]) == 2


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "fashion_mnist", "tiny_imagenet"])
def test_every_dataset_trains_from_its_files(tmp_path, data_root, dataset):
    cfg = config(tmp_path, dataset=dataset, data_root=str(data_root), epochs=1, batch_size=8, train_subset=0,
                 test_subset=0, pool="flex", sac=True)
    assert train.run(cfg)["status"] == "completed"


def test_validation_split_is_evaluated_instead_of_test(tmp_path):
    record = train.run(config(tmp_path, epochs=1, val_fraction=0.1, test_subset=0))
    assert record["eval_split"] == "val"


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist' (choose from 'cifar10', "),
    (["--pool", "max"], "argument --pool: invalid choice: 'max'"),
    (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    (["--epochs", "0"], "epochs must be positive"),
    (["--batch-size", "-5"], "batch size must be positive"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent"], "no usable data under /nonexistent"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    assert train.main([*argv, "--results-dir", str(tmp_path), "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_cli_runs_a_table_column(tmp_path, capsys):
    # the default recipe's Adam at 1e-3: at SGD's TINY_LR its loss jumps within this one epoch
    argv = ["--dataset", "synthetic", "--pool", "flex", "--reg", "1e-3", "--dropout", "0.25", "--sac",
            "--sac-weights", "0.01", "0.11", "0.88", "--epochs", "1", "--train-subset", "128",
            "--test-subset", "64", "--batch-size", "64", "--lr", "1e-3", "--results-dir", str(tmp_path),
            "--wandb", "disabled"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    path = out.strip().split("record ")[-1]
    assert records.read_record(path)["config"]["sac_weights"] == [0.01, 0.11, 0.88]


def test_config_validation():
    with pytest.raises(ConfigError, match="dropout"):
        RunConfig(dropout=1.5)
    assert RunConfig(seed=1).run_id != RunConfig(seed=0).run_id
    assert RunConfig(wandb="disabled", results_dir="x").run_id == RunConfig().run_id


def test_learns_real_fashion_mnist(tmp_path, real_fashion_mnist):
    cfg = RunConfig(dataset="fashion_mnist", data_root=str(real_fashion_mnist), epochs=1, batch_size=50,
                    lr=0.05, augment=False, train_subset=3000, test_subset=1000, wandb="disabled",
                    results_dir=str(tmp_path / "results"))
    assert train.run(cfg)["metrics"]["accuracy"] > 0.5  # chance is 0.1
