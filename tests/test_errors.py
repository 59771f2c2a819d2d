"""check_output_dir: an output directory that cannot be created or written is one clear error line
before any work, and checking it creates nothing."""

from __future__ import annotations

import os

import pytest

from offrl.errors import OffrlError, check_output_dir


def test_existing_and_creatable_dirs_pass_and_nothing_is_created(tmp_path):
    check_output_dir(str(tmp_path))
    check_output_dir(str(tmp_path / "a" / "b" / "run"))
    check_output_dir(tmp_path / "run", what="MINARI_DATASETS_PATH")  # a PathLike too
    assert list(tmp_path.iterdir()) == []


def test_relative_path_is_resolved_against_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_output_dir("runs/iql/x")
    (tmp_path / "runs").write_text("")
    with pytest.raises(OffrlError, match=r"^--run-dir runs/iql/x: cannot be created: .*runs is not a directory$"):
        check_output_dir("runs/iql/x")


def test_path_under_a_regular_file(tmp_path):
    """Fails for root too: nothing can be created below a file."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OffrlError) as err:
        check_output_dir(str(blocker / "run"))
    assert str(err.value) == f"--run-dir {blocker / 'run'}: cannot be created: {blocker} is not a directory"
    with pytest.raises(OffrlError) as err:
        check_output_dir(str(blocker / "deeper" / "run"), what="MINARI_DATASETS_PATH")
    assert str(err.value) == f"MINARI_DATASETS_PATH {blocker / 'deeper' / 'run'}: cannot be created: {blocker} is not a directory"
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_path_that_is_a_regular_file_or_a_dangling_link(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OffrlError) as err:
        check_output_dir(str(blocker), what="MINARI_DATASETS_PATH")
    assert str(err.value) == f"MINARI_DATASETS_PATH {blocker}: not a directory"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(OffrlError, match="link: not a directory$"):  # os.makedirs would fail on it too
        check_output_dir(str(link))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere: os.access says yes")
def test_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OffrlError) as err:
            check_output_dir(str(ro))
        assert str(err.value) == f"--run-dir {ro}: not writable"
        with pytest.raises(OffrlError) as err:
            check_output_dir(str(ro / "a" / "run"))
        assert str(err.value) == f"--run-dir {ro / 'a' / 'run'}: cannot be created: {ro} is not writable"
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)
