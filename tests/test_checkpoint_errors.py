"""A checkpoint that cannot be loaded is refused naming the file and saying which case it is (truncated or corrupt,
not a checkpoint, unreadable, another format version); stale temporary files are swept once per checkpoint path
and process. Every case is a real file under tmp_path."""

import os
import zipfile
from pathlib import Path

import pytest
import torch

from mmlexp import checkpoint
from mmlexp.checkpoint import CHECKPOINT_FILE, FORMAT_KEY, FORMAT_VERSION, find_resume, load, save_atomic
from mmlexp.config import ConfigError

STATE = {"model": {"w": torch.arange(4096, dtype=torch.float32)}, "epoch": 1}


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / CHECKPOINT_FILE
    save_atomic(STATE, path)
    return path


def refused(path: Path, setting: str = "auto") -> str:
    with pytest.raises(ConfigError) as err:
        load(path, setting)
    message = str(err.value)
    assert f"cannot load the checkpoint {path} (" in message and "use trainer.resume=never to start over" in message
    return message


def test_a_good_checkpoint_loads_with_its_format_version(good):
    state = load(good, "auto")
    assert state[FORMAT_KEY] == FORMAT_VERSION and state["epoch"] == 1
    assert torch.equal(state["model"]["w"], STATE["model"]["w"])


def test_only_a_training_state_is_stamped(tmp_path):
    save_atomic({"state_dict": {"w": torch.zeros(2)}, "config": ""}, tmp_path / "best.pt")  # best.pt as written
    assert FORMAT_KEY not in torch.load(tmp_path / "best.pt", weights_only=True)


def test_a_checkpoint_written_before_the_format_version_loads(tmp_path):
    torch.save(STATE, tmp_path / "old.pt")
    assert load(tmp_path / "old.pt", "auto")["epoch"] == 1


def test_a_flipped_bit_is_corrupt(good):
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the weights
    good.write_bytes(bytes(data))
    assert "fails its CRC-32 check" in refused(good) and "it is truncated or corrupt" in refused(good)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_cut_short_archive_is_truncated(good, keep):
    data = good.read_bytes()
    good.write_bytes(data[: int(len(data) * keep)])
    message = refused(good)
    assert "a zip archive cut short" in message and "it is truncated or corrupt" in message


def test_an_empty_file_is_truncated(tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"")
    message = refused(tmp_path / CHECKPOINT_FILE)
    assert "(the file is empty): it is truncated or corrupt" in message


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    path.write_text("not a checkpoint\n")
    message = refused(path)
    assert "a text file: it starts with b'not a checkpoint\\n'" in message and "not an mmlexp checkpoint" in message
    assert "truncated or corrupt" not in message


def test_a_zip_without_the_records_is_not_a_checkpoint(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    message = refused(path)
    assert "no data.pkl; it holds notes/readme.txt" in message and "not an mmlexp checkpoint" in message


def test_a_torch_file_without_a_model_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert "without model or epoch): it is not an mmlexp checkpoint" in refused(tmp_path / "other.pt")


def test_a_directory_is_unreadable_also_under_auto(tmp_path):
    (tmp_path / CHECKPOINT_FILE).mkdir()
    with pytest.raises(ConfigError, match=rf"cannot load the checkpoint {tmp_path / CHECKPOINT_FILE} \(Is a direc"):
        find_resume("auto", tmp_path, {}, {})
    assert "the file cannot be read" in refused(tmp_path / CHECKPOINT_FILE)


ROOT_REFUSED = Path("/proc/sys/vm/compact_memory")  # mode 0200: reading it is refused to root too


def root_may_read_it() -> bool:
    try:
        ROOT_REFUSED.open("rb").close()
    except PermissionError:
        return False
    except OSError:
        return True  # not here
    return True


@pytest.mark.skipif(
    os.geteuid() == 0 and root_may_read_it(),
    reason=f"run as root, which reads any mode, and {ROOT_REFUSED} (refused to root) is not here to link to",
)
def test_a_file_without_read_permission_is_unreadable(tmp_path):
    """chmod 000 where not root; as root (which reads any mode) a link to a write-only /proc/sys file."""
    path = tmp_path / CHECKPOINT_FILE
    if os.geteuid() != 0:
        save_atomic(STATE, path)
        path.chmod(0)
    else:
        path.symlink_to(ROOT_REFUSED)
    message = refused(path)
    assert "(Permission denied): the file cannot be read" in message


def test_another_checkpoint_format_version_is_refused(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    torch.save({FORMAT_KEY: FORMAT_VERSION + 1, "renamed": {}}, path)  # the version is read first
    message = refused(path)
    assert f"(checkpoint format {FORMAT_VERSION + 1}; this mmlexp reads format {FORMAT_VERSION})" in message
    assert "it was written by another version" in message and "the mmlexp and PyTorch that wrote it" in message


def test_a_newer_pytorch_archive_version_is_refused(good, tmp_path):
    path = tmp_path / "newer.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as archive:
        for info in source.infolist():
            data = source.read(info.filename)
            archive.writestr(info, b"99\n" if info.filename.endswith("/version") else data)
    message = refused(path)
    assert "(PyTorch file format 99, newer than the" in message and "it was written by another version" in message


def test_a_stale_temporary_file_is_swept_once_per_process(tmp_path, monkeypatch):
    """A killed writer's temporary file goes at the first save; one made later (another live writer's) stays."""
    monkeypatch.setattr(checkpoint, "_swept", set())
    path = tmp_path / CHECKPOINT_FILE
    stale = tmp_path / f".{CHECKPOINT_FILE}.999999.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_atomic(STATE, path)
    assert not stale.exists() and load(path, "auto")["epoch"] == 1
    live = tmp_path / f".{CHECKPOINT_FILE}.999998.tmp"
    live.write_bytes(b"being written")
    save_atomic(STATE | {"epoch": 2}, path)
    assert live.exists() and load(path, "auto")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, CHECKPOINT_FILE]
    monkeypatch.setattr(checkpoint, "_swept", set())  # a new process: the other writer is gone
    save_atomic(STATE, path)
    assert not live.exists()
