"""Config loading: presets, user folders, overrides and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlckpt.config import (
    PROJECT_CONF_DIR,
    load_config,
    parse_positive_int,
    shuffle_buffer_size,
    with_buffer_size,
)
from dlckpt.errors import UsageError
from dlckpt.estimate.estimator import formula_bytes


def test_default_config_is_the_readme_production_setting():
    cfg = load_config()
    assert shuffle_buffer_size(cfg) == 250_000
    estimate = formula_bytes(250_000, cfg.estimate.bytes_per_sample, cfg.estimate.formula_overhead)
    assert estimate == 187_500_000_000


@pytest.mark.parametrize(
    ("name", "buffer", "encoded"),
    [("octo_pretrain", 500_000, False), ("openvla", 256_000, True), ("small", 64, False)],
)
def test_presets(name, buffer, encoded):
    cfg = load_config(name)
    assert shuffle_buffer_size(cfg) == buffer
    assert cfg.dataloader.buffer_encoded_frames is encoded
    assert cfg.dataloader._target_ == "dlckpt.pipeline.robot.build_robot_dataset"


def test_overrides_apply_to_the_dataloader_and_settings():
    cfg = load_config("small", ["dataloader.shuffle_buffer_size=42", "estimate.num_hosts=8"])
    assert shuffle_buffer_size(cfg) == 42
    assert cfg.estimate.num_hosts == 8


def test_user_config_with_only_a_dataloader_gets_project_defaults(tmp_path: Path):
    (tmp_path / "mine.yaml").write_text(
        "dataloader:\n  _target_: user_pipelines.plain_dataset\n  shuffle_buffer_size: 5000\n"
    )
    cfg = load_config("mine", ["estimate.num_hosts=2"], config_dir=tmp_path)
    assert shuffle_buffer_size(cfg) == 5000
    assert cfg.roundtrip.small_buffer_size == 100
    assert cfg.estimate.formula_overhead == 1.5
    assert cfg.estimate.num_hosts == 2


def test_user_values_win_over_defaults_and_presets_are_still_found(tmp_path: Path):
    (tmp_path / "mine.yaml").write_text(
        "defaults:\n  - openvla\n  - _self_\nestimate:\n  num_hosts: 4\ndataloader:\n  shuffle_buffer_size: 9\n"
    )
    cfg = load_config("mine", config_dir=tmp_path)
    assert cfg.estimate.num_hosts == 4
    assert shuffle_buffer_size(cfg) == 9
    assert cfg.dataloader.image_size == 224  # from the project's openvla preset


def test_unknown_config_name_lists_the_available_ones():
    with pytest.raises(UsageError, match=r"'nope': no such config; available: .*openvla.*small"):
        load_config("nope")


def test_unknown_key_gives_hydras_message():
    with pytest.raises(UsageError, match=r"Could not override 'estimate\.no_such_key'"):
        load_config("small", ["estimate.no_such_key=1"])


def test_bad_override_value_is_one_line():
    with pytest.raises(UsageError) as caught:
        load_config("small", ["estimate.num_hosts=many"])
    assert "estimate.num_hosts=many" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_config_dir(tmp_path: Path):
    with pytest.raises(UsageError, match="no such folder"):
        load_config("config", config_dir=tmp_path / "absent")


@pytest.mark.parametrize("value", [0, -3, "abc", "1.5", None, True])
def test_buffer_size_must_be_a_positive_integer(value):
    with pytest.raises(UsageError, match="expected a positive integer"):
        parse_positive_int(value, "dataloader.shuffle_buffer_size")


def test_reducing_the_buffer_never_touches_the_config_or_its_file():
    before = (PROJECT_CONF_DIR / "config.yaml").read_bytes()
    cfg = load_config()
    reduced = with_buffer_size(cfg, 100)
    assert shuffle_buffer_size(reduced) == 100
    assert shuffle_buffer_size(cfg) == 250_000
    assert (PROJECT_CONF_DIR / "config.yaml").read_bytes() == before


def test_a_quoted_whole_number_is_read_as_the_number_and_anything_else_is_one_line():
    """Decided (issue 24): `${oc.env:…}` settings arrive as strings, so "100" is 100."""
    from dlckpt.config import load_config, shuffle_buffer_size
    from dlckpt.errors import UsageError

    assert (
        shuffle_buffer_size(load_config("small", ["dataloader.shuffle_buffer_size='100'"])) == 100
    )
    with pytest.raises(
        UsageError, match=r"^dataloader.shuffle_buffer_size='1e3': expected a positive integer"
    ):
        shuffle_buffer_size(load_config("small", ["dataloader.shuffle_buffer_size='1e3'"]))
