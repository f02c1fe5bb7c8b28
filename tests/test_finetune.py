"""`python -m repro.finetune` on tiny Fashion-MNIST files in the real format, and on missing data."""

import re

from repro import finetune


def test_prints_both_accuracies(data_root, capsys):
    assert finetune.main(["--data-root", str(data_root), "--steps", "2", "--batch-size", "4", "--seed", "1",
                          "--softmax"]) == 0
    out = capsys.readouterr().out
    assert "2 steps of 4, seed 1, 20 test images" in out
    assert re.search(r"average pool \(unconverted\) +test accuracy \d+\.\d\d%", out)
    assert re.search(r"FlexPool, softmax form \(converted\) +test accuracy \d+\.\d\d%", out)


def test_missing_data_is_one_line_and_exit_2(tmp_path, capsys):
    assert finetune.main(["--data-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fashion_mnist: no usable data under") and err.count("\n") == 1
