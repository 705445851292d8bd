"""Public weights found by name: the table, the cache, ``diffeel models fetch`` and ``create_model``
without a checkpoint. Downloads come from a server on 127.0.0.1 in a thread; nothing leaves the machine."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from diffeel.cli import main
from diffeel.errors import DiffeelError
from diffeel.models import create_model, hub

PAYLOAD = bytes(range(256)) * 300  # 76,800 bytes: several chunks


class WeightServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path → bytes) and counts the requests for each path."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), WeightRequestHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.cut_short: set[str] = set()  # paths whose body stops halfway (a dropped connection)
        self.stalled: set[str] = set()  # paths that answer too late

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class WeightRequestHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path in self.server.stalled:
            time.sleep(1.5)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.server.cut_short else body)

    def log_message(self, format, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server():
    weight_server = WeightServer()
    thread = threading.Thread(target=weight_server.serve_forever, daemon=True)
    thread.start()
    yield weight_server
    weight_server.shutdown()
    weight_server.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty DIFFEEL_HOME for the test."""
    folder = tmp_path / "home"
    monkeypatch.setenv("DIFFEEL_HOME", str(folder))
    return folder


def publish(monkeypatch, name: str, content: bytes, url: str = "http://127.0.0.1:9/unused.pth") -> hub.PublicWeights:
    """Give model ``name`` a public weight file with ``content``'s size and SHA-256 for this test."""
    entry = hub.PublicWeights(url=url, size=len(content), sha256=hashlib.sha256(content).hexdigest(), licence="MIT",
                              file_name=f"{name}_weights.pth")
    monkeypatch.setitem(hub.PUBLIC_WEIGHTS, name, entry)
    return entry


@pytest.fixture
def tiny(monkeypatch, server, home) -> hub.PublicWeights:
    """Model ``tiny_segmenter`` published on the local server."""
    server.files["/weights/tiny.pth"] = PAYLOAD
    return publish(monkeypatch, "tiny_segmenter", PAYLOAD, server.url("/weights/tiny.pth"))


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- the table ------------------------------------------------------------------------------------


def test_the_table_pins_each_public_file_to_a_commit():
    assert set(hub.PUBLIC_WEIGHTS) >= {"espnet_cityscapes", "espnetv2_cityscapes"}
    for name, entry in hub.PUBLIC_WEIGHTS.items():
        assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+/raw/[0-9a-f]{40}/\S+", entry.url), name
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.size > 0 and entry.licence == "MIT", name
        assert entry.url.rsplit("/", 1)[1] == entry.file_name, name
    assert hub.PUBLIC_WEIGHTS["espnet_cityscapes"].url.startswith("https://github.com/sacmehta/ESPNet/raw/")
    assert hub.PUBLIC_WEIGHTS["espnetv2_cityscapes"].url.startswith("https://github.com/sacmehta/EdgeNets/raw/")


def test_the_home_folder_follows_diffeel_home_then_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFEEL_HOME", str(tmp_path / "mine"))
    assert hub.diffeel_home() == tmp_path / "mine"
    assert hub.weights_destination("espnet_cityscapes") == tmp_path / "mine" / "weights" / "espnet_p_2_q_8.pth"
    monkeypatch.delenv("DIFFEEL_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.diffeel_home() == tmp_path / "xdg" / "diffeel"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert hub.diffeel_home() == tmp_path / "user" / ".cache" / "diffeel"


# ---- fetching -------------------------------------------------------------------------------------


def test_a_download_lands_under_diffeel_home_by_one_rename(tiny, home, server, monkeypatch):
    renames = []
    replace = hub.os.replace

    def recording_replace(source, target):
        renames.append((Path(source), Path(target), Path(target).exists()))
        replace(source, target)

    monkeypatch.setattr(hub.os, "replace", recording_replace)
    path = hub.fetch_weights("tiny_segmenter", progress=False)
    assert path == home / "weights" / "tiny_segmenter_weights.pth" and path.read_bytes() == PAYLOAD
    [(source, target, existed)] = renames
    assert source.parent == target.parent and source.name.startswith(".") and target == path and not existed
    assert files_under(home) == ["weights/tiny_segmenter_weights.pth"] and hub.weights_path("tiny_segmenter") == path


def test_a_cached_file_is_not_downloaded_again(tiny, server):
    first = hub.fetch_weights("tiny_segmenter", progress=False)
    assert hub.fetch_weights("tiny_segmenter", progress=False) == first
    assert server.requests == ["/weights/tiny.pth"]


def test_a_damaged_cached_file_is_downloaded_again(tiny, server, home):
    destination = hub.weights_destination("tiny_segmenter")
    destination.parent.mkdir(parents=True)
    destination.write_bytes(b"\0" * len(PAYLOAD))  # the right size, the wrong bytes
    assert hub.fetch_weights("tiny_segmenter", progress=False).read_bytes() == PAYLOAD
    assert server.requests == ["/weights/tiny.pth"]


def test_a_wrong_checksum_fails_in_one_sentence_and_leaves_nothing(monkeypatch, server, home):
    server.files["/weights/other.pth"] = PAYLOAD[::-1]
    entry = publish(monkeypatch, "tiny_segmenter", PAYLOAD, server.url("/weights/other.pth"))
    with pytest.raises(DiffeelError) as raised:
        hub.fetch_weights("tiny_segmenter", progress=False)
    message = str(raised.value)
    assert f"not the expected {entry.sha256}" in message and hashlib.sha256(PAYLOAD[::-1]).hexdigest() in message
    assert "\n" not in message and files_under(home) == []


@pytest.mark.parametrize("failure", ["404", "closed port", "dropped connection", "timeout"])
def test_an_unreachable_url_fails_in_one_sentence_naming_where_to_copy_the_file(failure, tiny, server, home, monkeypatch):
    url = {"404": server.url("/weights/missing.pth"), "closed port": f"http://127.0.0.1:{closed_port()}/tiny.pth"}.get(failure, tiny.url)
    if failure == "dropped connection":
        server.cut_short.add("/weights/tiny.pth")
    if failure == "timeout":
        server.stalled.add("/weights/tiny.pth")
        monkeypatch.setattr(hub, "DOWNLOAD_TIMEOUT_SECONDS", 0.3)
    with pytest.raises(DiffeelError) as raised:
        hub.fetch_weights("tiny_segmenter", url=url, progress=False)
    message = str(raised.value)
    assert message.startswith(f"{url} could not be reached (") and "\n" not in message
    assert f"copy it to {home / 'weights' / 'tiny_segmenter_weights.pth'}" in message
    assert {"404": "HTTP 404", "closed port": "refused", "dropped connection": "closed after 38400 of 76800 bytes",
            "timeout": "timed out"}[failure] in message
    assert files_under(home) == []


def test_an_interrupted_download_leaves_no_file(tiny, home, monkeypatch):
    def interrupted(read_chunk, stream, entry, progress):
        stream.write(read_chunk())
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hub.fetch_weights("tiny_segmenter", progress=False)
    assert files_under(home) == []


def test_a_model_without_public_weights_cannot_be_fetched(home):
    with pytest.raises(DiffeelError, match="rpl_wrn38 has no public weights to fetch; models with them: espnet_cityscapes"):
        hub.fetch_weights("rpl_wrn38")


def test_a_hand_placed_file_is_found_when_its_size_matches(monkeypatch, home):
    publish(monkeypatch, "tiny_segmenter", PAYLOAD)
    destination = hub.weights_destination("tiny_segmenter")
    destination.parent.mkdir(parents=True)
    destination.write_bytes(PAYLOAD[:100])  # an interrupted copy
    assert hub.weights_path("tiny_segmenter") is None
    destination.write_bytes(PAYLOAD)
    assert hub.weights_path("tiny_segmenter") == destination


# ---- the CLI --------------------------------------------------------------------------------------


def test_models_fetch_saves_the_file_and_says_where(tiny, server, home, capsys):
    assert main(["models", "fetch", "tiny_segmenter", "--url", server.url("/weights/tiny.pth"), "--quiet"]) == 0
    path = home / "weights" / "tiny_segmenter_weights.pth"
    assert str(path) in capsys.readouterr().out and path.read_bytes() == PAYLOAD
    assert main(["models", "fetch", "tiny_segmenter", "--quiet"]) == 0 and len(server.requests) == 1


@pytest.mark.parametrize("url", ["/weights/missing.pth", "/weights/reversed.pth"])
def test_models_fetch_fails_with_one_sentence(url, tiny, server, home, capsys):
    server.files["/weights/reversed.pth"] = PAYLOAD[::-1]
    assert main(["models", "fetch", "tiny_segmenter", "--url", server.url(url), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("diffeel models fetch: error: ") and captured.err.count("\n") == 1
    assert files_under(home) == []


def test_models_lists_whether_public_weights_are_cached(monkeypatch, home, capsys):
    publish(monkeypatch, "small_deeplab", PAYLOAD)
    assert main(["models"]) == 0
    assert "small_deeplab: " in (listed := capsys.readouterr().out) and "not cached; diffeel models fetch small_deeplab" in listed
    destination = hub.weights_destination("small_deeplab")
    destination.parent.mkdir(parents=True)
    destination.write_bytes(PAYLOAD)
    assert main(["models"]) == 0 and f"[public weights: cached in {destination}]" in capsys.readouterr().out


# ---- weights found by name --------------------------------------------------------------------------


@pytest.fixture
def published_small_deeplab(monkeypatch, home) -> dict:
    """small_deeplab with a public weight file (a state dict of it), not yet in the cache."""
    state = create_model("small_deeplab").state_dict()
    state = {key: torch.full_like(value, 0.5) if value.is_floating_point() else value for key, value in state.items()}
    source = home.parent / "small_deeplab.pth"
    torch.save(state, source)
    publish(monkeypatch, "small_deeplab", source.read_bytes(), source.as_uri())
    return state


def test_create_model_without_a_checkpoint_loads_the_cached_weights(published_small_deeplab):
    with pytest.raises(DiffeelError) as raised:
        create_model("small_deeplab")
    assert str(raised.value) == ("no weights for small_deeplab: pass --checkpoint PATH or run "
                                 "`diffeel models fetch small_deeplab`")
    assert create_model("small_deeplab", published_weights=False) is not None  # its initial weights
    hub.fetch_weights("small_deeplab", progress=False)  # a file:// URL: a mirror on a shared drive
    loaded = create_model("small_deeplab").state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in published_small_deeplab.items())


def test_other_models_build_as_before_without_a_checkpoint(home):
    assert hub.public_weights("small_rpl") is None
    assert create_model("small_rpl") is not None


def test_score_without_a_checkpoint_names_the_fetch_command(published_small_deeplab, tmp_path, capsys):
    out = tmp_path / "scores"
    arguments = ["score", "--model", "small_deeplab", "--benchmark", "comsamy", "--root", str(tmp_path / "bench"), "--out", str(out), "--quiet"]
    assert main(arguments) == 2
    assert capsys.readouterr().err == ("diffeel score: error: no weights for small_deeplab: pass --checkpoint PATH or run "
                                       "`diffeel models fetch small_deeplab`.\n")
    assert not out.exists()
