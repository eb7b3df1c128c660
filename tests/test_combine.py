"""``lsframe combine``: the geometric mean of several searches' best distributions."""

from __future__ import annotations

import pytest
import yaml
from search_helpers import make

from lsframe.lr_distribution import combine_distributions


def test_combined_distribution_is_the_geometric_mean():
    combined = combine_distributions([{"a": 1.0, "b": 4.0}, {"a": 1.0, "b": 1.0}])
    assert combined == pytest.approx({"a": 1.0, "b": 2.0})
    assert combine_distributions([{}, {"a": 4.0}]) == pytest.approx({"a": 2.0})  # {} is flat
    with pytest.raises(ValueError, match="same parts"):
        combine_distributions([{"a": 1.0}, {"b": 1.0}])


def test_combine_cli_writes_the_geometric_mean_of_files(tmp_path, capsys):
    from lsframe.__main__ import main

    (tmp_path / "a.yaml").write_text("layers_0: 0.25\nhead: 4.0\n")
    (tmp_path / "b.json").write_text('{"head": 1.0, "layers_0": 1.0}')
    out = tmp_path / "new_folder" / "combined.yaml"
    main(["combine", str(tmp_path / "a.yaml"), str(tmp_path / "b.json"), "--out", str(out)])
    assert yaml.safe_load(out.read_text()) == pytest.approx({"layers_0": 0.5, "head": 2.0})
    assert "head: 2.0" in capsys.readouterr().out
    assert make(str(out)).lr_distribution  # usable as a module's lr_distribution
    (tmp_path / "bad.yaml").write_text("layers_0: -1\n")
    with pytest.raises(SystemExit) as refused:  # one line on stderr, exit status 2
        main(["combine", str(tmp_path / "a.yaml"), str(tmp_path / "bad.yaml")])
    assert refused.value.code == 2
    assert capsys.readouterr().err == (
        f"lsframe combine: error: part 'layers_0' must be a finite number >= 0, got -1 "
        f"({tmp_path / 'bad.yaml'})\n"
    )


def test_combine_out_that_cannot_be_written_is_one_line_at_out(tmp_path, capsys):
    from lsframe.__main__ import main

    (tmp_path / "a.yaml").write_text("layers_0: 0.25\nhead: 4.0\n")
    with pytest.raises(SystemExit) as refused:  # a file where a folder must be
        main(["combine", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "a.yaml" / "x.yaml")])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lsframe combine: error: cannot write {tmp_path}/a.yaml/x.yaml: ")
    assert err.endswith("(--out)\n") and err.count("\n") == 1
