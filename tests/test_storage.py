"""Storage: the local folder backend, the S3 backend against a real SeaweedFS
server, URL parsing, key validation, error messages and the retry helper."""

from __future__ import annotations

import os
import pickle
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3server import SeaweedS3

from fractalq.cli.common import free_port
from fractalq.storage import (
    LocalStorage,
    ObjectNotFoundError,
    Storage,
    StorageError,
    StorageOptions,
    check_storage,
    open_storage,
)
from fractalq.storage.retry import call_with_retry
from fractalq.storage.s3 import S3Storage

BAD_KEYS = ["", "/abs/key", "..", "a/../b", "a/..", "./a", "a/./b", "a//b", "a/", "a\\b", "a\0b"]

# Little patience for tests that expect failures: errors must arrive quickly.
IMPATIENT = StorageOptions(
    attempts=2,
    retry_base_delay=0.01,
    retry_max_delay=0.05,
    connect_timeout=1.0,
    read_timeout=1.0,
    s3_max_attempts=1,
)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---- local folder ----------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    storage = open_storage((tmp_path / "store").as_uri())
    assert isinstance(storage, LocalStorage)
    return storage


def test_local_round_trip(local: LocalStorage) -> None:
    check_storage(local)  # creates the folder
    assert not local.exists("jobs/1/band-0.png")
    local.put("jobs/1/band-0.png", b"\x89PNG band zero")
    local.put("jobs/1/band-1.png", b"")
    assert local.exists("jobs/1/band-0.png")
    assert local.get("jobs/1/band-0.png") == b"\x89PNG band zero"
    assert local.get("jobs/1/band-1.png") == b""
    assert not local.exists("jobs/1")  # a folder is not an object
    assert local.url("jobs/1/band-0.png") == (local.root / "jobs/1/band-0.png").as_uri()
    assert local.url("a b.png").endswith("/store/a%20b.png")
    assert local.presigned_url("jobs/1/band-0.png", 60) is None

    local.delete(["jobs/1/band-0.png", "jobs/1/band-1.png", "never/stored"])
    assert not local.exists("jobs/1/band-0.png")
    # Emptied subfolders are pruned, the root stays.
    assert list(local.root.iterdir()) == []
    local.delete([])

    with pytest.raises(
        ObjectNotFoundError, match=re.escape("no object 'jobs/1/band-0.png'")
    ) as caught:
        local.get("jobs/1/band-0.png")
    assert not caught.value.transient
    one_line(caught.value)


def test_local_put_is_atomic_and_leaves_no_temporary_files(local: LocalStorage) -> None:
    local.put("k/obj", b"first")
    local.put("k/obj", b"second, longer than the first")
    assert local.get("k/obj") == b"second, longer than the first"
    local.put("k/obj", b"3")
    assert local.get("k/obj") == b"3"
    assert files_under(local.root) == ["k/obj"]


def test_local_storage_flushes_to_disk_when_asked(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, fsync=True)
    storage.put("jobs/a/band", b"1")
    storage.put("jobs/a/band", b"2")
    assert storage.get("jobs/a/band") == b"2"
    assert files_under(storage.root) == ["jobs/a/band"]


def test_local_reader_never_sees_a_partial_object(tmp_path: Path) -> None:
    # fsync off: atomicity comes from the rename, not from flushing.
    storage = LocalStorage(tmp_path, fsync=False)
    versions = [bytes([n]) * 2_000_000 for n in (1, 2)]
    storage.put("band", versions[0])
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            storage.put("band", versions[n % 2])
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            assert storage.get("band") in versions
    finally:
        stop.set()
        thread.join()
    assert files_under(tmp_path) == ["band"]


def test_local_failed_write_keeps_old_object_and_no_temporary_file(
    local: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.put("obj", b"old")
    fast = LocalStorage(local.root, options=IMPATIENT)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match=r"input/output error.*gave up after 2 attempts"):
        fast.put("obj", b"new")
    monkeypatch.undo()
    assert local.get("obj") == b"old"
    assert files_under(local.root) == ["obj"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected(local: LocalStorage, key: str) -> None:
    with pytest.raises(ValueError, match="storage key"):
        local.put(key, b"x")
    with pytest.raises(ValueError, match="storage key"):
        local.get(key)
    with pytest.raises(ValueError, match="storage key"):
        local.exists(key)
    with pytest.raises(ValueError, match="storage key"):
        local.url(key)
    with pytest.raises(ValueError, match="storage key"):
        local.presigned_url(key, 60)
    # A bad key anywhere in a delete: nothing is deleted.
    local.put("good", b"x")
    with pytest.raises(ValueError, match="storage key"):
        local.delete(["good", key])
    assert local.exists("good")


def test_bad_keys_are_rejected_by_s3_without_network() -> None:
    storage = S3Storage("some-bucket", "prefix")
    for key in BAD_KEYS:
        with pytest.raises(ValueError, match="storage key"):
            storage.url(key)


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file, where a folder should be")
    storage = open_storage((blocker / "sub").as_uri(), options=IMPATIENT)

    with pytest.raises(StorageError) as caught:
        check_storage(storage)
    message = one_line(caught.value)
    assert f"folder {blocker / 'sub'} is not writable" in message
    assert str(blocker) in message

    started = time.monotonic()
    with pytest.raises(StorageError, match="is not writable") as caught:
        storage.put("k", b"x")
    assert not caught.value.transient
    assert time.monotonic() - started < 1  # not retried


def test_object_in_the_way_is_a_clear_error(local: LocalStorage) -> None:
    local.put("a", b"file")
    with pytest.raises(StorageError, match=r"'a/b'.*in the way"):
        local.put("a/b", b"x")
    local.put("c/d", b"x")
    with pytest.raises(StorageError, match=r"'c'.*in the way"):
        local.put("c", b"x")


def test_local_storage_pickles(local: LocalStorage) -> None:
    local.put("k", b"v")
    copy = pickle.loads(pickle.dumps(local))
    assert copy.get("k") == b"v"
    assert copy.location == local.location


# ---- URLs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/tmp/store",
        "tmp/store",
        "file:relative",
        "file://relative/path",
        "file:///tmp/x?query=1",
        "http://example.com/bucket",
        "ftp://host/path",
        "s3://",
        "s3:///prefix",
        "s3://ab/x",
        "s3://bad_bucket!/x",
        "s3://key:secret@bucket/x",
        "s3://host:9000/bucket",
        "s3://bucket/a/../b",
        "s3://bucket/a//b",
        "S3:/bucket",
    ],
)
def test_open_storage_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_storage(url)
    message = one_line(caught.value)
    assert message.startswith(
        "storage URL must be file:///absolute/path or s3://bucket/prefix, not "
    )
    if "secret" in url:
        assert "secret" not in message
    else:
        assert repr(url) in message


def test_open_storage_parses_good_urls() -> None:
    local = open_storage("file:///tmp/a%20b/c/")
    assert isinstance(local, LocalStorage)
    assert local.root == Path("/tmp/a b/c")
    assert local.location == "file:///tmp/a%20b/c"
    assert open_storage("file://localhost/srv/x").location == "file:///srv/x"

    bare = open_storage("s3://my-bucket")
    assert isinstance(bare, S3Storage)
    assert (bare.bucket, bare.prefix) == ("my-bucket", "")
    assert bare.url("jobs/1/band-0.png") == "s3://my-bucket/jobs/1/band-0.png"

    nested = open_storage("s3://my-bucket/renders/v1/")
    assert isinstance(nested, S3Storage)
    assert nested.prefix == "renders/v1"
    assert nested.location == "s3://my-bucket/renders/v1"
    assert nested.url("k") == "s3://my-bucket/renders/v1/k"
    assert open_storage(nested.location).location == nested.location


# ---- errors and retries ------------------------------------------------------


def test_storage_error_is_one_line_and_pickles() -> None:
    error = StorageError("server said:\n  try\tlater ", transient=True)
    assert str(error) == "server said: try later"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.transient) == (StorageError, str(error), True)
    missing = pickle.loads(pickle.dumps(ObjectNotFoundError("no object 'k'")))
    assert isinstance(missing, ObjectNotFoundError) and not missing.transient


def test_retry_retries_transient_errors_only() -> None:
    options = StorageOptions(attempts=4, retry_base_delay=0.1, retry_max_delay=0.2)
    calls: list[int] = []
    delays: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StorageError("connection reset", transient=True)
        return "ok"

    assert call_with_retry(flaky, options, sleep=delays.append) == "ok"
    assert len(calls) == 3
    assert len(delays) == 2 and all(0.05 <= d <= 0.2 for d in delays)

    calls.clear()

    def denied() -> None:
        calls.append(1)
        raise StorageError("access denied")

    with pytest.raises(StorageError, match=r"^access denied$"):
        call_with_retry(denied, options, sleep=delays.append)
    assert len(calls) == 1

    def always_down() -> None:
        raise StorageError("cannot reach S3 endpoint", transient=True)

    with pytest.raises(StorageError, match="gave up after 4 attempts") as caught:
        call_with_retry(always_down, options, sleep=lambda _: None)
    assert caught.value.transient


# ---- S3, against a real SeaweedFS server -------------------------------------


def use_s3_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Point boto3 at ``env`` only: no stray AWS_* variable or profile file."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no metadata-service wait
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedS3]:
    use_s3_env(monkeypatch, s3_server.env())
    yield s3_server


def test_presigned_urls_can_be_signed_for_a_public_endpoint(s3_env: SeaweedS3) -> None:
    # The pods reach S3 at one address, people at another (a port-forward, a
    # public name): the link must carry, and be signed for, the public one.
    bucket = s3_env.make_bucket()
    public = s3_env.endpoint.replace("127.0.0.1", "localhost")
    options = StorageOptions(public_endpoint=public)
    storage = open_storage(f"s3://{bucket}/images", options=options)
    storage.put("a.png", b"pixels")
    url = storage.presigned_url("a.png", 300)
    assert url is not None and url.startswith(f"{public}/{bucket}/images/a.png?")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"pixels"
    # The signature covers the host: the same link at the pods' address is refused.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.replace(public, s3_env.endpoint), timeout=10)
    assert refused.value.code == 403
    # It survives pickling (workers' child processes), and plain storage is unchanged.
    assert pickle.loads(pickle.dumps(storage)).presigned_url("a.png", 60).startswith(public)
    plain = open_storage(f"s3://{bucket}/images").presigned_url("a.png", 60)
    assert plain is not None and plain.startswith(s3_env.endpoint)


@pytest.mark.parametrize(
    "endpoint",
    ["localhost:9000", "ftp://host", "http://", "http://h/path", "http://u@h", "http://h?x=1"],
)
def test_a_bad_public_endpoint_is_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="public endpoint must be http"):
        StorageOptions(public_endpoint=endpoint)


def test_s3_round_trip(s3_env: SeaweedS3) -> None:
    bucket = s3_env.make_bucket()
    storage = open_storage(f"s3://{bucket}/renders/v1")
    check_storage(storage)

    assert not storage.exists("jobs/1/band-0.png")
    storage.put("jobs/1/band-0.png", b"\x89PNG band zero")
    storage.put("jobs/1/band-1.png", b"one")
    storage.put("jobs/1/band-1.png", b"one, replaced")
    assert storage.exists("jobs/1/band-0.png")
    assert storage.get("jobs/1/band-0.png") == b"\x89PNG band zero"
    assert storage.get("jobs/1/band-1.png") == b"one, replaced"
    assert storage.url("jobs/1/band-0.png") == f"s3://{bucket}/renders/v1/jobs/1/band-0.png"

    # The prefix is really part of the object's key on the server.
    admin = s3_env.client()
    listed = admin.list_objects_v2(Bucket=bucket)
    assert sorted(o["Key"] for o in listed.get("Contents", [])) == [
        "renders/v1/jobs/1/band-0.png",
        "renders/v1/jobs/1/band-1.png",
    ]

    url = storage.presigned_url("jobs/1/band-0.png", 300)
    assert url is not None and url.startswith(s3_env.endpoint)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\x89PNG band zero"

    storage.delete(["jobs/1/band-0.png", "jobs/1/band-1.png", "never/stored"])
    assert not storage.exists("jobs/1/band-0.png")
    assert admin.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    storage.delete([])

    with pytest.raises(ObjectNotFoundError) as caught:
        storage.get("jobs/1/band-0.png")
    assert one_line(caught.value) == f"no object 'jobs/1/band-0.png' in s3://{bucket}/renders/v1"


def test_s3_large_object_and_pickling(s3_env: SeaweedS3) -> None:
    bucket = s3_env.make_bucket()
    storage = open_storage(f"s3://{bucket}")
    data = os.urandom(6 * 1024 * 1024)  # more than SeaweedFS's 4 MB chunk size
    storage.put("big.bin", data)
    assert storage.get("big.bin") == data

    # After use the client exists; a pickled copy leaves it behind and makes its own.
    copy = pickle.loads(pickle.dumps(storage))
    assert isinstance(copy, S3Storage)
    assert copy.get("big.bin") == data


def test_s3_missing_bucket_names_the_bucket(s3_env: SeaweedS3) -> None:
    storage = open_storage("s3://no-such-bucket-here/prefix")
    expected = f"bucket 'no-such-bucket-here' does not exist at {s3_env.endpoint}"
    with pytest.raises(StorageError) as caught:
        check_storage(storage)
    assert one_line(caught.value) == expected

    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        storage.put("k", b"x")  # not silently auto-created, and not retried
    assert one_line(caught.value) == expected
    assert not caught.value.transient
    assert time.monotonic() - started < 2
    with pytest.raises(StorageError, match="does not exist"):
        storage.get("k")


def test_s3_wrong_secret_is_access_denied(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.make_bucket()
    use_s3_env(monkeypatch, s3_server.env(AWS_SECRET_ACCESS_KEY="not-the-secret"))
    storage = open_storage(f"s3://{bucket}")
    for operation in (
        lambda: check_storage(storage),
        lambda: storage.put("k", b"x"),
        lambda: storage.get("k"),
    ):
        with pytest.raises(StorageError) as caught:
            operation()
        message = one_line(caught.value)
        assert message.startswith(f"access denied to bucket '{bucket}' at {s3_server.endpoint}")
        assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in message
        assert not caught.value.transient


def test_s3_unknown_access_key_is_access_denied(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.make_bucket()
    use_s3_env(monkeypatch, s3_server.env(AWS_ACCESS_KEY_ID="nobody"))
    with pytest.raises(StorageError, match=r"access denied .*InvalidAccessKeyId"):
        open_storage(f"s3://{bucket}").put("k", b"x")


def test_s3_missing_credentials_are_named(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_s3_env(monkeypatch, {"AWS_ENDPOINT_URL": s3_server.endpoint})
    storage = open_storage("s3://some-bucket")
    with pytest.raises(StorageError, match=r"no usable S3 credentials .*AWS_ACCESS_KEY_ID"):
        check_storage(storage)
    with pytest.raises(StorageError, match="no usable S3 credentials"):
        storage.presigned_url("k", 60)


def test_s3_unreachable_endpoint_fails_fast(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    use_s3_env(monkeypatch, s3_server.env(AWS_ENDPOINT_URL=endpoint))
    storage = open_storage("s3://some-bucket/p", options=IMPATIENT)

    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        check_storage(storage)
    assert one_line(caught.value) == f"cannot reach S3 endpoint {endpoint}: connection refused"

    with pytest.raises(StorageError) as caught:
        storage.put("k", b"x")
    assert one_line(caught.value) == (
        f"cannot reach S3 endpoint {endpoint}: connection refused (gave up after 2 attempts)"
    )
    assert caught.value.transient
    assert time.monotonic() - started < 5


def test_s3_silent_endpoint_times_out(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Accepts connections (the kernel does, from the backlog) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        use_s3_env(monkeypatch, s3_server.env(AWS_ENDPOINT_URL=endpoint))
        storage: Storage = open_storage("s3://some-bucket", options=IMPATIENT)
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            storage.get("k")
        elapsed = time.monotonic() - started
    assert one_line(caught.value) == (
        f"S3 endpoint {endpoint} did not answer within 1s (gave up after 2 attempts)"
    )
    assert 1.5 < elapsed < 6


def test_s3_bad_endpoint_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    use_s3_env(monkeypatch, {"AWS_ENDPOINT_URL": "localhost:9000"})
    with pytest.raises(StorageError, match="endpoint localhost:9000"):
        open_storage("s3://some-bucket").get("k")


def _file_round_trip(storage: Storage, tmp_path: Path, size: int) -> None:
    source = tmp_path / "image.png"
    data = os.urandom(size)
    source.write_bytes(data)
    assert storage.put_file("jobs/1/image.png", str(source)) == size
    target = tmp_path / "out" / "copy.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert storage.get_file("jobs/1/image.png", str(target)) == size
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.png"]  # no temporary
    with pytest.raises(ObjectNotFoundError):
        storage.get_file("jobs/2/image.png", str(target))
    assert target.read_bytes() == data  # a failed get leaves the file as it was


def test_local_files_go_in_and_out_whole(local: LocalStorage, tmp_path: Path) -> None:
    _file_round_trip(local, tmp_path, 3 * 1024 * 1024 + 5)
    assert files_under(local.root) == ["jobs/1/image.png"]


def test_s3_files_go_in_and_out_whole_in_parts(s3_env: SeaweedS3, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    storage = open_storage(f"s3://{bucket}/renders")
    _file_round_trip(storage, tmp_path, 20 * 1024 * 1024 + 7)  # a multipart upload
    assert storage.exists("jobs/1/image.png")
