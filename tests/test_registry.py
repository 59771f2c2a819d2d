"""Dataset registry: ids, reference scores, checksums, lookup errors and the printing helpers."""

from __future__ import annotations

import io
import re

import pytest

from offrl.data import DatasetInfo, get_info, is_present, list_datasets, load_dataset, register
from offrl.data.registry import D4RL_REF_SCORES, dataset_path, print_info, print_list
from offrl.errors import OffrlError

pytestmark = pytest.mark.usefixtures("data_dirs")

FAMILIES = ("hopper", "halfcheetah", "walker2d", "ant")
LEVELS = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
ANTMAZE = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")


def test_unknown_id_suggests():
    with pytest.raises(OffrlError, match=r"^unknown dataset 'hoper-medium-v2' \(did you mean: hopper-medium-v2\b"):
        load_dataset("hoper-medium-v2")
    with pytest.raises(OffrlError, match=r"^unknown dataset 'zzz'$"):
        get_info("zzz")


def test_d4rl_locomotion_ids_and_reference_scores():
    ids = {info.id: info for info in list_datasets("d4rl")}
    expected = {  # d4rl/infos.py
        "hopper": (-20.272305, 3234.3),
        "halfcheetah": (-280.178953, 12135.0),
        "walker2d": (1.629008, 4592.3),
        "ant": (-325.6, 3879.7),
    }
    for family in FAMILIES:
        for level in LEVELS:
            info = ids[f"{family}-{level}-v2"]
            assert (info.ref_min_score, info.ref_max_score) == expected[family]
            assert info.url == (
                "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/"
                f"{family}_{level.replace('-', '_')}-v2.hdf5"
            )
            assert info.filename == info.url.rsplit("/", 1)[1]
            # every v2 locomotion file has a known size and full sha256
            assert info.size and info.size > 10_000_000
            assert info.sha256 and re.fullmatch(r"[0-9a-f]{64}", info.sha256)
    assert ids["hopper-medium-v2"].env_id == "Hopper-v5"
    assert (ids["walker2d-medium-v2"].obs_dim, ids["walker2d-medium-v2"].act_dim) == (17, 6)
    assert ids["ant-medium-v2"].obs_dim == 111
    assert ids["walker2d-medium-replay-v0"].filename == "walker_mixed.hdf5"
    assert "timeouts" in ids["hopper-medium-v0"].description


def test_reference_checksums_match_research_note():
    # sizes and sha256 prefixes listed in shared/reference/datasets.md
    known = {
        "hopper-medium-v2": (152_756_557, "5bdf1bc4a713"),
        "hopper-medium-replay-v2": (75_854_457, "e121c5f7c985"),
        "halfcheetah-medium-expert-v2": (474_567_252, "015db75dae5b"),
        "walker2d-medium-replay-v2": (86_323_963, "e75de96a4f77"),
    }
    for dataset_id, (size, prefix) in known.items():
        info = get_info(dataset_id)
        assert info.size == size and info.sha256.startswith(prefix)


def test_antmaze_ids():
    for task in ANTMAZE:
        info = get_info(f"antmaze-{task}-v2")
        assert (info.ref_min_score, info.ref_max_score) == (0.0, 1.0)
        assert info.env_id is None
        assert (info.obs_dim, info.act_dim) == (29, 8)
        assert "/ant_maze_v2/" in info.url and info.size
    assert get_info("antmaze-medium-play-v2").sha256 is None  # size-only entry


def test_minari_ids():
    info = get_info("mujoco/hopper/medium-v0")
    assert info.source == "minari" and info.env_id == "Hopper-v5"
    assert info.ref_min_score is None and info.ref_max_score is None
    assert get_info("D4RL/antmaze/umaze-v1").source == "minari"


@pytest.mark.parametrize("family", sorted(D4RL_REF_SCORES))
def test_normalized_score_of_ref_max_is_100(family):
    from offrl.evaluation import normalized_score

    info = get_info(f"{family}-medium-v2" if family != "antmaze" else "antmaze-umaze-v2")
    assert (info.ref_min_score, info.ref_max_score) == D4RL_REF_SCORES[family]
    assert normalized_score(info.ref_max_score, info.ref_min_score, info.ref_max_score) == pytest.approx(100.0)
    assert normalized_score(info.ref_min_score, info.ref_min_score, info.ref_max_score) == pytest.approx(0.0)


def test_register_rejects_duplicates_and_bad_source(temp_register):
    info = temp_register(DatasetInfo("offrl/test/x-v0", "offrl", "Hopper-v5", 0.0, 1.0, 11, 3))
    with pytest.raises(OffrlError, match="already registered"):
        register(info)
    with pytest.raises(OffrlError, match="unknown source 'hdf5'"):
        DatasetInfo("bad", "hdf5", None, None, None, None, None)


def test_paths_follow_environment(data_dirs):
    assert dataset_path("hopper-medium-v2") == data_dirs.d4rl / "hopper_medium-v2.hdf5"
    assert dataset_path("mujoco/hopper/medium-v0") == data_dirs.minari / "mujoco/hopper/medium-v0"
    assert not is_present("hopper-medium-v2")
    (data_dirs.d4rl / "hopper_medium-v2.hdf5").touch()
    assert is_present("hopper-medium-v2")


def test_print_list_and_info():
    out = io.StringIO()
    print_list(file=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["id", "source", "env", "obs/act", "ref", "min", "ref", "max", "present"]
    row = next(line for line in lines if line.startswith("hopper-medium-v2 "))
    assert row.split() == ["hopper-medium-v2", "d4rl", "Hopper-v5", "11/3", "-20.2723", "3234.3", "no"]
    out = io.StringIO()
    print_info("antmaze-umaze-v2", file=out)
    text = out.getvalue()
    assert "ref_max_score:  1.0" in text
    assert "present:        no" in text
    assert "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5" in text
