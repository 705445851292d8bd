"""Public weight files of registered models, found by name, and the cache they are downloaded to.

Each entry of :data:`PUBLIC_WEIGHTS` pins a file to a commit of its authors' repository, with its
size and SHA-256. ``diffeel models fetch NAME`` (:func:`fetch_weights`) downloads it to
``<home>/weights/<file name>``, where home is ``$DIFFEEL_HOME`` or else ``$XDG_CACHE_HOME/diffeel``
(``~/.cache/diffeel``); ``create_model(NAME)`` without a checkpoint loads the cached file. On an
offline machine, copy the file there by hand. Imports no model.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import DiffeelError

DOWNLOAD_TIMEOUT_SECONDS = 30  # per connection attempt and per read
CHUNK_BYTES = 1 << 16
URL_SCHEMES = ("http", "https", "file")


@dataclass(frozen=True)
class PublicWeights:
    """One public weight file: where it is published and what its bytes must be."""

    url: str  # pinned to a commit
    size: int  # bytes
    sha256: str
    licence: str
    file_name: str  # its name in the cache


def _github_file(repository: str, commit: str, path: str) -> str:
    return f"https://github.com/{repository}/raw/{commit}/{path}"


PUBLIC_WEIGHTS: dict[str, PublicWeights] = {
    "espnet_cityscapes": PublicWeights(
        url=_github_file("sacmehta/ESPNet", "afe71c38edaee3514ca44e0adcafdf36109bf437", "pretrained/decoder/espnet_p_2_q_8.pth"),
        size=1_501_621,
        sha256="343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e",
        licence="MIT",
        file_name="espnet_p_2_q_8.pth",
    ),
    "espnetv2_cityscapes": PublicWeights(
        url=_github_file("sacmehta/EdgeNets", "2b232d3f7fb60658755dad1ebca0ffc895cc795e",
                         "model/segmentation/model_zoo/espnetv2/espnetv2_s_2.0_city_1024x512.pth"),
        size=3_376_094,
        sha256="a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8",
        licence="MIT",
        file_name="espnetv2_s_2.0_city_1024x512.pth",
    ),
}


def public_weights(name: str) -> PublicWeights | None:
    """The public weight file of model ``name``, or None when it has none."""
    return PUBLIC_WEIGHTS.get(name)


def diffeel_home() -> Path:
    """``$DIFFEEL_HOME``, else ``$XDG_CACHE_HOME/diffeel``, else ``~/.cache/diffeel``."""
    if os.environ.get("DIFFEEL_HOME"):
        return Path(os.environ["DIFFEEL_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "diffeel"


def weights_destination(name: str) -> Path:
    """Where the weights of ``name`` live in the cache (whether or not they are there)."""
    return diffeel_home() / "weights" / _entry(name).file_name


def weights_path(name: str) -> Path | None:
    """The cached weights of ``name`` if present with the published size, else None."""
    entry = public_weights(name)
    if entry is None:
        return None
    path = weights_destination(name)
    return path if path.is_file() and path.stat().st_size == entry.size else None


def published_checkpoint(name: str) -> Path | None:
    """The checkpoint a model loads when none is given: None for a model without public weights,
    the cached file for one with them; raises when that file has not been fetched."""
    if public_weights(name) is None:
        return None
    path = weights_path(name)
    if path is None:
        raise DiffeelError(f"no weights for {name}: pass --checkpoint PATH or run `diffeel models fetch {name}`")
    return path


def fetch_weights(name: str, url: str | None = None, progress: bool = True) -> Path:
    """Download the weights of ``name`` into the cache (from ``url`` instead of the published
    address, e.g. a mirror) and return their path; a cached file with the right SHA-256 is kept.

    The bytes go to a temporary file beside the destination and are renamed into place only once
    their SHA-256 matches, so an interrupted or failed download leaves no file under the final name.
    """
    entry = _entry(name)
    url = url or entry.url
    destination = weights_destination(name)
    if destination.is_file() and destination.stat().st_size == entry.size and sha256_of(destination) == entry.sha256:
        return destination
    if urllib.parse.urlsplit(url).scheme not in URL_SCHEMES:
        raise DiffeelError(f"cannot download the weights of {name} from {url!r}: give an http, https or file URL")
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": f"diffeel/{__version__}"}),
                                          timeout=DOWNLOAD_TIMEOUT_SECONDS)
    except (OSError, http.client.HTTPException, ValueError) as error:
        if isinstance(error, urllib.error.HTTPError):
            error.close()
        raise _unreachable(name, url, destination, error) from None

    def read_chunk() -> bytes:
        try:
            return response.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise _unreachable(name, url, destination, error) from None

    with response:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
        temporary = Path(temporary)
        try:
            with os.fdopen(handle, "wb") as stream:
                digest, received = _download(read_chunk, stream, entry, progress)
                stream.flush()
                os.fsync(stream.fileno())
            announced = response.headers.get("Content-Length", "")
            if announced.isdigit() and received < int(announced):
                raise _unreachable(name, url, destination, ConnectionError(f"the connection closed after {received} of {announced} bytes"))
            if digest != entry.sha256:
                raise DiffeelError(f"the download of {name}'s weights from {url} has SHA-256 {digest}, not the expected "
                                   f"{entry.sha256}; nothing was saved")
            os.replace(temporary, destination)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return destination


def sha256_of(path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(name: str) -> PublicWeights:
    entry = public_weights(name)
    if entry is None:
        raise DiffeelError(f"{name} has no public weights to fetch; models with them: {', '.join(sorted(PUBLIC_WEIGHTS))}")
    return entry


def _download(read_chunk, stream, entry: PublicWeights, progress: bool) -> tuple[str, int]:
    """Copy the chunks ``read_chunk()`` gives (until an empty one) to ``stream`` with a progress
    bar; their SHA-256 in hex and their number of bytes."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    received = 0
    with tqdm(total=entry.size, desc=entry.file_name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress) as bar:
        for chunk in iter(read_chunk, b""):
            stream.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
            received += len(chunk)
    return digest.hexdigest(), received


def _unreachable(name: str, url: str, destination: Path, error: BaseException) -> DiffeelError:
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        reason = str(error.reason)
    else:
        reason = str(error) or type(error).__name__
    return DiffeelError(f"{url} could not be reached ({reason}); on an offline machine, download {_entry(name).url} "
                        f"elsewhere and copy it to {destination}")
