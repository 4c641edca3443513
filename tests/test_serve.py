"""`imgembed serve`: a real server on a free localhost port, driven by a real HTTP client (httpx):
uploads, filters, bad uploads, files outside the index refused, a bearer token, 20 concurrent
requests."""

import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import REPO, encode, make_photo, tiny_cfg, write_photos
from PIL import Image

from imgembed.indexer import index_folder
from imgembed.serve.http_api import ServeCfg, check_exposure, is_loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, index, tmp, token: str | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "imgembed.cli", "serve", "--index", str(index), "--port", str(self.port)]
        if token:
            (tmp / "token").write_text(token + "\n")
            argv += ["--token-file", str(tmp / "token")]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = open(tmp / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.get(self.url + "/info", headers=headers, timeout=2)
                assert r.status_code == 200, r.text
                break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"server did not start: {self.log.read()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 15"
    exif.get_ifd(0x8769)[0x9003] = "2023:06:01 10:00:00"
    return exif.tobytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    root = tmp / "photos"
    paths = write_photos(root / "jpg", 12)
    (root / "phone").mkdir()
    for i in range(3):
        data = encode(make_photo(40 + i, size=(160, 120)), "HEIF", exif=_exif())
        (root / "phone" / f"IMG_{i}.HEIC").write_bytes(data)
    shutil.copy(paths[0], root / "jpg" / "copy-of-0.jpg")  # a duplicate pair
    index_folder(root, tmp / "ix", tiny_cfg())
    server = Server(tmp / "ix", tmp)
    yield server, paths, tmp
    server.stop()


pytestmark = pytest.mark.slow  # a server process each


def upload(url: str, data: bytes, name: str = "q.jpg", **params) -> httpx.Response:
    return httpx.post(url + "/search/image", files={"file": (name, data, "image/jpeg")}, params=params, timeout=60)


def test_info_and_openapi(served):
    server, _, _ = served
    info = httpx.get(server.url + "/info").json()
    assert info["count"] == 16 and info["backbone"] == "test-tiny"
    assert info["filters"]["cameras"] == ["Apple iPhone 15"] and set(info["filters"]["exts"]) == {"jpg", "heic"}
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/search/image", "/search/text", "/search/photo/{photo_id}", "/duplicates", "/thumbnail"} <= set(spec["paths"])
    assert httpx.get(server.url + "/docs").status_code == 200


def test_upload_finds_the_photo(served):
    server, paths, _ = served
    twin = encode(Image.open(paths[5]).convert("RGB"), "HEIF", quality=95)  # a HEIC of the JPEG
    r = upload(server.url, twin, "twin.heic", k=3)
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 3 and hits[0]["path"] == str(paths[5].resolve()) and hits[0]["score"] > 0.98
    assert httpx.get(server.url + hits[0]["thumbnail"]).headers["content-type"] == "image/jpeg"


def test_filters(served):
    server, paths, _ = served
    data = paths[1].read_bytes()
    hits = upload(server.url, data, k=10, camera="iphone", after="2023").json()["results"]
    assert len(hits) == 3 and all(h["camera"] == "Apple iPhone 15" and h["taken"] == "2023-06-01T10:00:00" for h in hits)
    assert len(upload(server.url, data, k=20, ext="jpg").json()["results"]) == 13
    assert len(upload(server.url, data, k=20, under="phone", min_width=150).json()["results"]) == 3
    r = upload(server.url, data, after="someday")
    assert r.status_code == 400 and "expected a date" in r.json()["detail"]
    first = upload(server.url, data, k=1).json()["results"][0]
    nb = httpx.get(f"{server.url}/search/photo/{first['id']}", params={"k": 4, "ext": "heic"}).json()["results"]
    assert len(nb) == 3 and all(h["path"].endswith(".HEIC") for h in nb)


@pytest.mark.parametrize("name,data,status,words", [
    ("empty.jpg", b"", 422, "empty"),
    ("notes.jpg", b"just some text, not an image", 422, "not an image"),
    ("cut.jpg", encode(make_photo(1, size=(400, 300)), "JPEG")[:900], 422, "broken image"),
    ("bomb.png", encode(Image.new("L", (12000, 9000)), "PNG"), 422, "limit"),
    ("huge.jpg", b"\xff" * (26 * 2**20), 413, "above the 25 MB limit"),
])
def test_bad_uploads_get_a_clear_answer(served, name, data, status, words):
    server, paths, _ = served
    r = upload(server.url, data, name)
    assert r.status_code == status and words in r.json()["detail"], r.text
    assert upload(server.url, paths[0].read_bytes()).status_code == 200  # the server goes on


def test_a_request_without_a_file_is_refused(served):
    server, _, _ = served
    assert httpx.post(server.url + "/search/image").status_code == 422


def test_only_files_recorded_in_the_index_are_served(served):
    server, paths, tmp = served
    outside = tmp / "secret.jpg"
    make_photo(3).save(outside)
    ok = httpx.get(server.url + "/thumbnail", params={"path": str(paths[2].resolve()), "size": 64})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    for path in (str(outside), "/etc/passwd", str(paths[2].parent / ".." / ".." / "secret.jpg"),
                 str(tmp / "ix" / "meta.sqlite")):
        r = httpx.get(server.url + "/thumbnail", params={"path": path})
        assert r.status_code == 404, path
    assert httpx.get(server.url + "/photos/999999/thumbnail").status_code == 404
    assert httpx.get(server.url + "/photos/999999").status_code == 404
    assert httpx.get(server.url + "/photos/1/thumbnail", params={"size": 99999}).status_code == 422


def test_text_search_on_an_image_only_backbone_says_why(served):
    server, _, _ = served
    r = httpx.get(server.url + "/search/text", params={"q": "a dog"})
    assert r.status_code == 400 and "text encoder" in r.json()["detail"]


def test_duplicates(served):
    server, paths, _ = served
    groups = httpx.get(server.url + "/duplicates", params={"threshold": 0.99}).json()["groups"]
    pair = next(g for g in groups if any(p["path"].endswith("copy-of-0.jpg") for p in g["photos"]))
    assert {p["path"] for p in pair["photos"]} >= {str(paths[0].resolve())}
    copies = httpx.get(server.url + "/duplicates").json()  # the copies preset: the byte copy alone
    assert copies["preset"] == "copies" and len(copies["groups"]) == 1
    copy = next(p["path"] for p in pair["photos"] if p["path"].endswith("copy-of-0.jpg"))
    assert {p["path"] for p in copies["groups"][0]["photos"]} == {str(paths[0].resolve()), copy}
    assert copies["groups"][0]["kind"] == "identical bytes" and copies["groups"][0]["reason"]
    assert httpx.get(server.url + "/duplicates", params={"preset": "nope"}).status_code == 422


def test_twenty_concurrent_requests(served):
    server, paths, _ = served
    datas = [paths[i % 12].read_bytes() for i in range(20)]
    want = {i: upload(server.url, datas[i], k=5).json()["results"] for i in range(12)}
    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(lambda i: upload(server.url, datas[i], k=5), range(20)))
    assert [r.status_code for r in got] == [200] * 20
    for i, r in enumerate(got):
        assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in want[i % 12]]


def test_a_bearer_token_is_required_when_set(served, tmp_path):
    _, paths, tmp = served
    server = Server(tmp / "ix", tmp_path, token="s3cret-token")
    try:
        assert httpx.get(server.url + "/info").status_code == 401
        assert httpx.get(server.url + "/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret-token"}
        assert httpx.get(server.url + "/info", headers=ok).status_code == 200
        r = httpx.post(server.url + "/search/image", files={"file": ("q.jpg", paths[0].read_bytes())}, headers=ok)
        assert r.status_code == 200
        assert httpx.get(server.url + "/photos/1/thumbnail").status_code == 401
    finally:
        server.stop()


@pytest.mark.parametrize("host,token,no_token,ok", [
    ("127.0.0.1", None, False, True), ("localhost", None, False, True), ("::1", None, False, True),
    ("0.0.0.0", None, False, False), ("192.168.1.5", None, False, False),
    ("0.0.0.0", "t", False, True), ("0.0.0.0", None, True, True),
])
def test_listening_beyond_localhost_needs_a_token(host, token, no_token, ok):
    cfg = ServeCfg(index="ix", host=host, token=token, allow_no_token=no_token)
    if ok:
        check_exposure(cfg)
    else:
        with pytest.raises(ValueError, match="bearer token"):
            check_exposure(cfg)
    assert is_loopback("127.0.0.2") and not is_loopback("example.org")
