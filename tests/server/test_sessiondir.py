"""The session directory: no client path leaves it, and it goes away completely."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compassd.protocol.errors import LimitExceeded, NoSuchFile, PathRefused
from compassd.server import sessiondir
from compassd.server.sessiondir import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    FileEntry,
    SessionDirectory,
    clean_stale,
    exchange,
)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


@pytest.fixture
def session(tmp_path):
    directory = SessionDirectory.create(tmp_path / "work", max_upload=1000, session="s1")
    yield directory
    directory.destroy()


def _furnish(directory: SessionDirectory, outside) -> None:
    """Files, folders and every kind of symlink, inside and out."""
    files = directory.files
    (files / "sub").mkdir()
    (files / "sub" / "f.txt").write_bytes(b"hello")
    (files / "file.txt").write_bytes(b"12345")
    os.symlink("sub", files / "in_link")
    os.symlink("file.txt", files / "in_file_link")
    os.symlink(str(files / "sub"), files / "in_abs")
    outside.mkdir(exist_ok=True)
    (outside / "secret").write_bytes(b"secret")
    os.symlink(str(outside), files / "out_dir")
    os.symlink(str(outside / "secret"), files / "out_file")
    os.symlink("../../outside", files / "out_rel")
    os.symlink("..", files / "up")
    os.symlink("loop", files / "loop")
    os.symlink("sub/../..", files / "sneaky")


@pytest.fixture(scope="module")
def furnished(tmp_path_factory):
    base = tmp_path_factory.mktemp("furnished")
    directory = SessionDirectory.create(base / "work", max_upload=10**6, session="h")
    _furnish(directory, base / "outside")
    yield directory
    directory.destroy()


NAMES = st.sampled_from(
    [
        "sub", "f.txt", "file.txt", "in_link", "in_file_link", "in_abs", "out_dir",
        "out_file", "out_rel", "up", "loop", "sneaky", "..", "new", "secret", "files",
        "partial",
    ]
)
ODDITIES = st.sampled_from([".", "", "\x00", "a" * 300, "\\", "~"])
COMPONENTS = st.one_of(NAMES, NAMES, NAMES, ODDITIES, st.text(max_size=8))
PATHS = st.one_of(
    st.builds(
        lambda lead, parts: lead + "/".join(parts),
        st.sampled_from(["", "", "", "/", "./", "//"]),
        st.lists(COMPONENTS, max_size=6),
    ),
    st.text(max_size=40),
)


@settings(max_examples=500)  # about a millisecond each
@given(PATHS)
def test_resolve_never_gives_a_path_outside_the_session(furnished, relpath):
    root = str(furnished.files)
    try:
        result = furnished.resolve(relpath)
    except PathRefused as e:
        assert str(e)  # a sentence, not an empty error
        return
    assert _inside(str(result), root)
    assert str(result) != root
    assert _inside(os.path.realpath(result), root)
    assert os.path.realpath(result) != root
    assert ".." not in relpath.split("/")
    assert not relpath.startswith("/")
    assert "\x00" not in relpath


@pytest.mark.parametrize(
    "relpath",
    ["", ".", "./", "/etc/passwd", "/", "..", "../x", "a/../../x", "sub/../file.txt",
     "a\x00b", "x" * (MAX_NAME_BYTES + 1), "a/" * (MAX_PATH_BYTES // 2 + 1), "\udc80"],
)
def test_resolve_refuses_empty_absolute_dotdot_nul_and_overlong_paths(session, relpath):
    with pytest.raises(PathRefused) as caught:
        session.resolve(relpath)
    assert "path" in str(caught.value)


def test_resolve_names_the_path_and_the_reason(session):
    with pytest.raises(PathRefused, match=r"'\.\./etc/passwd'.*'\.\.'"):
        session.resolve("../etc/passwd")
    with pytest.raises(PathRefused, match=r"'/etc/passwd' is absolute"):
        session.resolve("/etc/passwd")


def test_resolve_accepts_ordinary_paths_inside(session):
    assert session.resolve("model.onnx") == session.files / "model.onnx"
    assert session.resolve("a//b/./c.bin") == session.files / "a" / "b" / "c.bin"
    assert session.resolve("x" * MAX_NAME_BYTES) == session.files / ("x" * MAX_NAME_BYTES)
    assert session.resolve("", allow_root=True) == session.files


def test_symlinks_that_stay_inside_are_followed_by_resolve(furnished):
    assert furnished.resolve("in_link/f.txt") == furnished.files / "in_link" / "f.txt"
    assert furnished.resolve("in_abs/f.txt") == furnished.files / "in_abs" / "f.txt"
    assert furnished.resolve("in_file_link") == furnished.files / "in_file_link"


@pytest.mark.parametrize(
    "relpath",
    ["out_dir", "out_dir/secret", "out_dir/new", "out_file", "out_rel/secret", "up", "up/partial",
     "up/files", "sneaky/x", "in_link/../out_dir"],
)
def test_symlinks_that_lead_out_are_refused(furnished, relpath):
    with pytest.raises(PathRefused):
        furnished.resolve(relpath)


def test_writing_through_a_directory_symlink_out_creates_nothing_outside(tmp_path):
    directory = SessionDirectory.create(tmp_path / "work", max_upload=100, session="w")
    _furnish(directory, tmp_path / "outside")
    before = sorted(os.listdir(tmp_path / "outside"))
    with pytest.raises(PathRefused):
        directory.open_for_write("out_dir/planted")
    with pytest.raises(PathRefused):
        directory.open_for_write("out_dir/deep/planted")
    with pytest.raises(PathRefused):
        directory.open_for_write("out_file")
    assert sorted(os.listdir(tmp_path / "outside")) == before
    assert (tmp_path / "outside" / "secret").read_bytes() == b"secret"


def test_files_are_never_opened_through_a_symlink_even_inside(furnished):
    with pytest.raises(PathRefused, match="symbolic link"):
        furnished.open_for_write("in_file_link")
    with pytest.raises(PathRefused, match="symbolic link"):
        furnished.open_for_read("in_file_link")
    assert (furnished.files / "file.txt").read_bytes() == b"12345"


def test_session_directory_and_its_folders_are_private(tmp_path):
    old = os.umask(0)
    try:
        directory = SessionDirectory.create(tmp_path / "work", max_upload=1, session="m")
    finally:
        os.umask(old)
    for path in (tmp_path / "work", directory.path, directory.files, directory.partial):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    assert directory.path.name == "session-m"


def test_each_session_gets_its_own_directory(tmp_path):
    one = SessionDirectory.create(tmp_path, max_upload=1)
    two = SessionDirectory.create(tmp_path, max_upload=1)
    assert one.path != two.path
    assert one.path.name.startswith("session-")
    with pytest.raises(FileExistsError):
        SessionDirectory.create(tmp_path, max_upload=1, session=one.session)


def test_open_for_write_makes_folders_inside(session):
    with session.open_for_write("a/b/c.bin") as f:
        f.write(b"xyz")
    assert (session.files / "a" / "b" / "c.bin").read_bytes() == b"xyz"
    assert stat.S_IMODE(os.stat(session.files / "a").st_mode) == 0o700
    with session.open_for_read("a/b/c.bin") as f:
        assert f.read() == b"xyz"


def test_open_for_write_refuses_a_file_used_as_a_folder(session):
    (session.files / "plain").write_bytes(b"")
    with pytest.raises(PathRefused, match="plain/x"):
        session.open_for_write("plain/x")


def test_open_for_read_refuses_a_fifo_without_blocking(session):
    os.mkfifo(session.files / "pipe")
    with pytest.raises(PathRefused, match="special file"):
        session.open_for_read("pipe")


def test_open_for_read_of_a_missing_file_or_folder_says_so(session):
    with pytest.raises(NoSuchFile, match="'absent'"):
        session.open_for_read("absent")
    (session.files / "folder").mkdir()
    with pytest.raises(PathRefused, match="folder"):
        session.open_for_read("folder")


def test_listdir_shows_files_folders_and_links_without_following(furnished):
    rows = {row.name: row for row in furnished.listdir()}
    assert rows["file.txt"] == FileEntry("file.txt", 5, "file")
    assert rows["sub"] == FileEntry("sub", 0, "dir")
    assert rows["out_dir"] == FileEntry("out_dir", 0, "link")
    assert list(rows) == sorted(rows)
    assert furnished.listdir("sub") == [FileEntry("f.txt", 5, "file")]
    assert furnished.listdir("in_link") == [FileEntry("f.txt", 5, "file")]
    assert furnished.listdir("file.txt") == [FileEntry("file.txt", 5, "file")]
    assert rows["file.txt"].as_box() == {"name": "file.txt", "size": 5, "kind": "file"}


def test_listdir_refuses_a_folder_outside_and_reports_a_missing_one(furnished):
    with pytest.raises(PathRefused):
        furnished.listdir("out_dir")
    with pytest.raises(NoSuchFile):
        furnished.listdir("nothing-here")


def test_listdir_does_not_show_uploads_under_way(session):
    session.new_partial()[1].close()
    assert session.listdir() == []


def test_remove_deletes_files_folders_and_links_but_not_link_targets(tmp_path):
    directory = SessionDirectory.create(tmp_path / "work", max_upload=100, session="r")
    _furnish(directory, tmp_path / "outside")
    directory.remove("file.txt")
    directory.remove("in_link")
    assert (directory.files / "sub" / "f.txt").exists()
    directory.remove("sub")
    assert not (directory.files / "sub").exists()
    names = {row.name for row in directory.listdir()}
    assert not names & {"file.txt", "in_link", "sub"}
    with pytest.raises(NoSuchFile, match="'file.txt'"):
        directory.remove("file.txt")
    with pytest.raises(PathRefused):
        directory.remove("out_dir/secret")
    assert (tmp_path / "outside" / "secret").exists()


def test_destroy_removes_everything_but_what_symlinks_point_to(tmp_path):
    directory = SessionDirectory.create(tmp_path / "work", max_upload=100, session="d")
    _furnish(directory, tmp_path / "outside")
    (directory.files / "locked").mkdir()
    (directory.files / "locked" / "x").write_bytes(b"x")
    os.chmod(directory.files / "locked", 0)
    directory.destroy()
    assert not directory.path.exists()
    assert (tmp_path / "outside" / "secret").read_bytes() == b"secret"
    assert os.listdir(tmp_path / "work") == []
    directory.destroy()  # twice is fine


def test_destroy_removes_a_file_that_appears_while_the_tree_is_removed(
        tmp_path, monkeypatch):
    """A thread may link a model cache entry into the session's partial folder while the
    reactor thread removes the session: the folder is then not empty when its turn comes
    (ENOTEMPTY), and the removal starts again rather than leaving the directory."""
    import errno
    import shutil

    import compassd.server.sessiondir as sessiondir

    directory = SessionDirectory.create(tmp_path / "work", max_upload=100, session="r")
    real = shutil.rmtree
    calls = []

    def racing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:  # the first pass removes the files, then a link appears
            real(directory.files)
            (directory.partial / "cached-0123").write_bytes(b"late")
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(directory.partial))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sessiondir.shutil, "rmtree", racing)
    directory.destroy()
    assert len(calls) == 2 and not directory.path.exists()
    assert directory.destroyed


def test_clean_stale_removes_only_session_directories(tmp_path):
    root = tmp_path / "work"
    stale = SessionDirectory.create(root, max_upload=1, session="old")
    (stale.files / "model.bin").write_bytes(b"m")
    os.symlink(str(tmp_path / "keep"), stale.files / "link")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious").write_bytes(b"p")
    (root / "session-file").write_bytes(b"a file, not a session")
    os.symlink(str(tmp_path / "keep"), root / "session-link")
    (root / "other").mkdir()
    (root / "sessions").mkdir()
    (root / "session-two").mkdir()

    assert clean_stale(root) == ["session-old", "session-two"]
    assert sorted(os.listdir(root)) == ["other", "session-file", "session-link", "sessions"]
    assert (tmp_path / "keep" / "precious").read_bytes() == b"p"
    assert clean_stale(root) == []
    assert clean_stale(tmp_path / "missing") == []


def _store(directory: SessionDirectory, relpath: str, data: bytes) -> None:
    """Store a file as an upload does: the quota counts what goes through commit."""
    token = object()
    directory.reserve(token, len(data), relpath)
    partial, file = directory.new_partial()
    with file:
        file.write(data)
    directory.commit(partial, relpath)
    directory.release(token)


def test_quota_counts_stored_files_and_reservations(session):
    _store(session, "a", b"x" * 600)
    assert session.used() == 600
    session.reserve("t1", 300, "b")
    assert session.used() == 900
    with pytest.raises(LimitExceeded, match="100 bytes are free"):
        session.reserve("t2", 101, "c")
    session.reserve("t2", 100, "c")
    session.release("t1")
    session.release("t2")
    assert session.used() == 600


def test_quota_counts_a_replaced_file_as_freed(session):
    _store(session, "a", b"x" * 600)
    session.reserve("t", 1000, "a")
    session.release("t")
    with pytest.raises(LimitExceeded):
        session.reserve("t", 401, "b")


def test_a_replaced_file_is_swapped_out_for_its_caller_to_remove_later(session):
    # Renaming a fresh file over an old one makes ext4 write out the new one and free the
    # old one in the rename; exchanged, the old content is handed back to be removed in a
    # thread, and the stored file is the new one from the first instant.
    _store(session, "m", b"old content")
    session.reserve("t", 3, "m")
    partial, file = session.new_partial()
    with file:
        file.write(b"new")
    handed: list[str] = []
    assert session.commit(partial, "m", lambda path: handed.append(str(path))) \
        == session.files / "m"
    session.release("t")
    assert (session.files / "m").read_bytes() == b"new"
    assert handed == [str(partial)], "the old file was renamed over, not swapped out"
    assert partial.read_bytes() == b"old content"
    assert session.used() == 3  # the old content counts no more
    os.unlink(partial)
    assert os.listdir(session.partial) == []


def test_without_exchange_a_replaced_file_is_renamed_over(session, monkeypatch):
    # Where renameat2 cannot exchange (another system, a file system without it), the
    # upload is stored by a plain rename, as before.
    monkeypatch.setattr(sessiondir, "exchange", lambda a, b: False)
    _store(session, "m", b"old content")
    partial, file = session.new_partial()
    with file:
        file.write(b"new")
    handed: list[object] = []
    session.commit(partial, "m", handed.append)
    assert (session.files / "m").read_bytes() == b"new"
    assert handed == [] and os.listdir(session.partial) == []
    assert session.used() == 3


def test_exchange_swaps_two_files_or_says_it_cannot(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    if not exchange(a, b):
        pytest.skip("this system or file system cannot exchange files")
    assert (a.read_bytes(), b.read_bytes()) == (b"B", b"A")
    with pytest.raises(FileNotFoundError):
        exchange(tmp_path / "missing", a)
