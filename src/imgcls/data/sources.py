"""Input sources: the image files a list of command-line inputs names — files, folders
(searched recursively), and for Ray Data also globs, text files of paths and URIs
(s3://, gs://, file://, ...). One listing for `imgcls predict|features` and `imgcls.ray`."""

from __future__ import annotations

import glob
from pathlib import Path

from imgcls.data.images import IMAGE_EXTENSIONS, list_images

__all__ = ["expand_inputs", "is_uri", "list_uri", "listed_paths"]

# What `expand_inputs` gives for each input: an image path (or URI), or, for an input with
# nothing to classify, the input and the error that says why.
Entry = str | tuple[str, Exception]

_EXTENSIONS = {extension.lstrip(".") for extension in IMAGE_EXTENSIONS}


def expand_inputs(inputs: list[str], sources: bool = False) -> list[Entry]:
    """Image files from files and directories, in the order given; with `sources` (--ray)
    also from globs, .txt files of paths (one a line, relative to the file's folder) and
    URIs (a file, or the image files under a folder or prefix). An input with nothing to
    classify stays in its place as a (path, error) pair."""
    entries: list[Entry] = []
    for item in inputs:
        path = Path(item)
        if sources and is_uri(item):
            try:
                entries.extend(list_uri(item))
            except (OSError, ValueError) as exc:  # pyarrow's errors are of these kinds
                entries.append((item, exc))
        elif path.is_dir():
            found = [str(p) for p in list_images(path)]
            entries.extend(
                found or [(item, FileNotFoundError(f"{item}: no image files in this directory"))]
            )
        elif sources and path.suffix.lower() == ".txt" and path.is_file():
            entries.extend(listed_paths(path))
        elif sources and any(c in item for c in "*?[") and not path.exists():  # a glob
            matches = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
            entries.extend(matches or [(item, FileNotFoundError(f"{item}: no file matches"))])
        else:
            entries.append(item)  # a missing file is reported by the classifier, in place
    return entries


def listed_paths(listing: Path) -> list[str]:
    """The paths or URIs of a text file, one a line (blank lines and # comments skipped);
    relative paths are relative to the file's folder."""
    lines = (line.strip() for line in listing.read_text(encoding="utf-8").splitlines())
    listed = [line for line in lines if line and not line.startswith("#")]
    return [line if is_uri(line) else str(listing.parent / line) for line in listed]


def is_uri(path: str) -> bool:
    """Whether `path` names storage by a scheme (s3://...) rather than a local file."""
    return "://" in path


def list_uri(uri: str) -> list[str]:
    """The image files at a URI Ray reads (s3://, gs://, file://, ...): the file itself,
    or those under a folder or prefix — recursively, by extension, hidden names skipped,
    sorted, as `list_images` finds them on a disk. FileNotFoundError when there is none;
    pyarrow's OSError or ValueError when the storage cannot be listed."""
    from pyarrow import fs  # deferred: pyarrow comes with the [ray] extra

    filesystem, root = fs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.File:
        return [uri]
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such file or folder")
    scheme = uri.partition("://")[0]
    found = sorted(
        f"{scheme}://{entry.path}"
        for entry in filesystem.get_file_info(fs.FileSelector(root, recursive=True))
        if entry.is_file
        and entry.base_name.rpartition(".")[2].lower() in _EXTENSIONS
        and not entry.base_name.startswith(".")
    )
    if not found:
        raise FileNotFoundError(f"{uri}: no image files here")
    return found
