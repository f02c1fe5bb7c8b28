"""Fair comparisons: at one seed all eight columns of both tables start from the same backbone and see the same
data; the paper's literal recipe is a run of its own; FlexPool's learning-rate multiplier; the loss's guards."""

import json
import math

import pytest
import torch

from repro import launch, status, train
from repro.config import RunConfig
from repro.experiments import COLUMNS, TABLES, cell_config, recipe_of
from repro.models import resnet20
from tests.helpers import write_run

CPU = torch.device("cpu")
SEED = 3


def all_columns(dataset="cifar10", **fields) -> list[RunConfig]:
    """The eight cells of one data set (both tables, every column) at one seed."""
    return [cell_config(t, dataset, c).replace(seed=SEED, device="cpu", wandb="disabled", **fields)
            for t in TABLES for c in COLUMNS]


def backbone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer except the pools' and the SAC heads'."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("pool.", "heads."))}


@pytest.mark.parametrize("dataset", ["cifar10", "fashion_mnist"])
def test_one_seed_starts_every_column_of_both_tables_from_the_same_backbone(dataset):
    configs = all_columns(dataset)
    first, *others = [backbone(train.make_model(c, CPU)) for c in configs]
    assert len(first) == 116  # stem, 9 blocks, fc: conv and linear weights, BatchNorm parameters and buffers
    for config, state in zip(configs[1:], others):
        assert state.keys() == first.keys()
        different = [k for k in first if not torch.equal(first[k], state[k])]
        assert not different, f"{config.cell}: {len(different)} backbone tensors differ, e.g. {different[:3]}"


def test_only_pools_and_heads_differ_between_avgpool_and_flexpool_with_sac():
    torch.manual_seed(SEED)
    plain = resnet20(10, pool="avg", sac=False).state_dict()
    torch.manual_seed(SEED)
    full = resnet20(10, pool="flex", sac=True, dropout=0.25).state_dict()
    assert set(full) - set(plain) == {k for k in full if k.startswith(("pool.", "heads."))}


def test_conv_and_linear_layers_use_he_fan_in_initialisation():
    torch.manual_seed(0)
    model = resnet20(10)
    conv = model.stages[2][0].conv2.weight  # 64 x 64 x 3 x 3: fan_in 576, enough values for a tight estimate
    assert conv.std().item() == pytest.approx(math.sqrt(2 / conv[0].numel()), rel=0.03)
    assert model.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)


def test_one_seed_gives_every_column_the_same_data_order_and_augmentation():
    n = 100
    draws = [train.epoch_draws(c.replace(batch_size=16), 2, n, CPU) for c in all_columns()]
    (order, aug, _), *rest = draws
    assert order.shape == (n // 16, 16) and aug.shape[:2] == order.shape
    for other_order, other_aug, _ in rest:
        assert torch.equal(order, other_order) and torch.equal(aug, other_aug)
    next_epoch, _, _ = train.epoch_draws(all_columns()[0].replace(batch_size=16), 3, n, CPU)
    assert not torch.equal(order, next_epoch)


def test_dropout_masks_come_from_a_stream_of_their_own():
    """Switching dropout on leaves order and augmentation as they were (they would shift if the masks were drawn
    from the shuffle's generator); the masks keep 1 - p of the features, scaled by 1 / (1 - p), and differ
    from step to step and from epoch to epoch."""
    config = cell_config("table1", "cifar10", "flexpool-reg").replace(seed=SEED, batch_size=50)
    with_dropout = cell_config("table1", "cifar10", "flexpool-reg-dropout").replace(seed=SEED, batch_size=50)
    order, aug, masks = train.epoch_draws(config, 0, 200, CPU)
    d_order, d_aug, d_masks = train.epoch_draws(with_dropout, 0, 200, CPU)
    assert masks is None and torch.equal(order, d_order) and torch.equal(aug, d_aug)
    p = with_dropout.dropout
    assert d_masks.shape == (4, 50, 64) and torch.equal(d_masks.unique(), torch.tensor([0.0, 1 / (1 - p)]))
    assert (d_masks > 0).float().mean().item() == pytest.approx(1 - p, abs=0.02)
    assert not torch.equal(d_masks[0], d_masks[1])
    assert not torch.equal(d_masks, train.epoch_draws(with_dropout, 1, 200, CPU)[2])


# ---- recipes ------------------------------------------------------------------------------------------------

def test_the_paper_recipe_is_adam_at_lr_0_1_without_weight_decay_and_a_run_of_its_own():
    suite = cell_config("table2", "cifar10", "flexpool-reg-dropout", recipe="suite")
    paper = cell_config("table2", "cifar10", "flexpool-reg-dropout")  # the default
    assert (paper.optimizer, paper.lr, paper.weight_decay) == ("adam", 0.1, 0.0)
    assert (suite.optimizer, suite.lr, suite.weight_decay) == ("sgd", 0.1, 5e-4)
    assert recipe_of(paper) == "paper" and recipe_of(suite) == "suite"
    assert paper.run_id != suite.run_id
    assert paper.replace(optimizer="sgd", weight_decay=5e-4).run_id == suite.run_id  # nothing else differs
    optimizer = train.make_optimizer(paper, train.make_model(paper.replace(device="cpu"), CPU))
    assert isinstance(optimizer, torch.optim.Adam)
    assert all(group["weight_decay"] == 0 for group in optimizer.param_groups)


def test_records_launch_and_status_name_the_recipe(tmp_path, data_root, capsys):
    common = ["table1", "--profile", "smoke", "--datasets", "fashion_mnist", "--columns", "avgpool", "--seeds", "1",
              "--results-dir", str(tmp_path)]
    assert launch.main([*common, "--recipe", "paper", "--dry-run"]) == 0
    assert "paper recipe" in capsys.readouterr().out
    config = cell_config("table1", "fashion_mnist", "avgpool", "smoke", recipe="paper").replace(
        seed=0, results_dir=str(tmp_path), data_root=str(data_root), train_subset=16, test_subset=8,
        batch_size=8, epochs=1, wandb="disabled", device="cpu")
    record = train.run(config)
    assert record["recipe"] == "paper" and record["config"]["optimizer"] == "adam"
    assert json.loads(next(tmp_path.glob("runs/**/*.json")).read_text())["recipe"] == "paper"
    assert status.main(common[:-2] + ["--results-dir", str(tmp_path), "--recipe", "suite"]) == 0
    assert "recipe paper" in capsys.readouterr().out  # the suite plan is pending; status names the other records


# ---- FlexPool's conditioning and the loss's guards ---------------------------------------------------------

def test_flex_lr_scale_scales_only_the_flexpool_weights_step():
    """One SGD step (momentum buffers start at zero) from the same model and batch with two multipliers: the
    FlexPool weights move `scale` times as far, every other parameter the same distance."""
    config = RunConfig(dataset="synthetic", pool="flex", sac=True, weight_decay=0.0, device="cpu",
                       wandb="disabled", batch_size=8, precision="fp32")
    moves = {}
    for scale in (1.0, 10.0):
        c = config.replace(flex_lr_scale=scale)
        model = train.make_model(c, CPU)
        before = {k: v.clone() for k, v in model.named_parameters()}
        torch.manual_seed(0)
        images, labels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (8,))
        step = train.make_step(c, model, train.make_optimizer(c, model), images, labels)
        step(torch.arange(8), None, None, torch.tensor(0.1))
        moves[scale] = {k: (v - before[k]).abs().sum().item() for k, v in model.named_parameters()}
    flex = [k for k in moves[1.0] if k.endswith("pool.weight")]
    assert len(flex) == 3  # the final pool and the two SAC heads'
    for k, move in moves[1.0].items():
        assert moves[10.0][k] == pytest.approx(move * (10 if k in flex else 1), rel=1e-4)


def test_loss_refuses_outputs_and_weights_that_do_not_pair_up():
    config = RunConfig(dataset="synthetic", sac=False)
    model = resnet20(10, sac=True)
    outputs = model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="3 head"):
        train.loss_fn(outputs, torch.tensor([0, 1]), model, config)


def test_a_tuned_flexpool_multiplier_leaves_the_avgpool_column_alone():
    params = {"flex_lr_scale": 0.05}
    assert cell_config("table1", "cifar10", "avgpool", params=params) == cell_config("table1", "cifar10", "avgpool")
    assert cell_config("table2", "cifar10", "flexpool", params=params).flex_lr_scale == 0.05


# ---- analysis: recipes apart, Eq. 2 measured --------------------------------------------------------------

def test_tables_never_mix_recipes_and_show_both_side_by_side(tmp_path, capsys):
    from analysis import collect, make_tables
    from analysis.summary import summarize

    for seed in range(2):
        write_run(tmp_path, "table1", "cifar10", "flexpool", seed, 0.90, recipe="suite")
        write_run(tmp_path, "table1", "cifar10", "flexpool", seed, 0.50, recipe="paper")
    runs, _ = collect.load_runs(tmp_path / "runs")
    chosen, notes = collect.select(runs)  # paper, the default
    assert list(chosen["accuracy"]) == [0.50, 0.50]
    assert "2 test run(s) of recipe 'suite' left out (use --recipe suite or both)" in notes
    paper = {t: collect.load_paper(t) for t in TABLES}
    both, _ = collect.select(runs, recipe="both")
    summary = summarize(both, paper, recipes=("suite", "paper")).set_index(
        ["recipe", "table", "dataset", "column"])
    assert summary.loc[("suite", "table1", "cifar10", "flexpool"), "mean"] == pytest.approx(90)
    assert summary.loc[("paper", "table1", "cifar10", "flexpool"), "mean"] == pytest.approx(50)
    make_tables.main(["--runs", str(tmp_path / "runs"), "--recipe", "both", "--out", str(tmp_path / "t")])
    out = capsys.readouterr().out
    assert "| CIFAR10 (suite) | " in out and "| CIFAR10 (paper) | " in out


def test_tables_report_how_far_the_final_flexpool_is_from_a_weighted_average(tmp_path):
    from analysis import collect
    from analysis.summary import summarize

    sums = {0: [1.5, 0.5, 1.0, 1.0], 1: [1.1, 1.1, 1.1, 1.1]}  # mean |sum - 1|: 0.25 and 0.1
    for seed, channel_sums in sums.items():
        path = write_run(tmp_path, "table1", "cifar10", "flexpool-reg", seed, 0.9)
        record = json.loads(path.read_text())
        record["flexpool"]["pool"]["sums"] = channel_sums
        path.write_text(json.dumps(record))
    write_run(tmp_path, "table1", "cifar10", "avgpool", 0, 0.9)
    runs, _ = collect.select(collect.load_runs(tmp_path / "runs")[0])
    summary = summarize(runs, {t: collect.load_paper(t) for t in TABLES}).set_index(
        ["table", "dataset", "column"])
    assert summary.loc[("table1", "cifar10", "flexpool-reg"), "sum_dev"] == pytest.approx(0.175)
    assert math.isnan(summary.loc[("table1", "cifar10", "avgpool"), "sum_dev"])
