"""What people attach to a message, made ready for the model: images, text files, refusals.

The Discord layer downloads each attachment (it refuses files Discord declares bigger than
``MAX_ATTACHMENT_BYTES`` before downloading) and hands them here as ``(filename, content_type,
data)``. :func:`prepare` sorts them into images for a vision model (decoded, downscaled and
re-encoded), text files to inline into the message (:func:`text_for_prompt`) and files that are
not used, each with the sentence the user is told. Nothing here raises on what a user sends: a
file that does not decode is a :class:`Skipped`, never an exception.

Pure: no I/O besides decoding bytes in memory, so it can run in a worker thread and be tested
exhaustively. The rules:

* **Images** are recognised by their bytes (Pillow, restricted to PNG, JPEG, WebP and GIF, the
  first frame of an animation), whatever their name says. They come out with the long side at
  most ``max_side``, upright (EXIF orientation applied, EXIF itself dropped: no GPS position
  reaches the model), as PNG when they use transparency or come from a lossless format (PNG,
  GIF: screenshots, diagrams and pixel art keep sharp edges), else as JPEG at quality 85 (JPEG
  and WebP sources: photos). Only the first ``max_images`` images that decode are used.
* **Text** is whatever decodes (the content type's charset, else UTF-8 with or without a BOM,
  or UTF-16/32 with one) and holds no NUL. ``max_text_chars`` is shared by all text files of a
  message, in order: the file that crosses it is cut, later ones are skipped.
* **Everything else** (archives, PDFs, programs, audio...) is skipped, by name.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Final

from . import user_messages as say

if TYPE_CHECKING:
    from PIL import Image

# Pillow is imported where an image is handled, not with this module: most bots never see one,
# and it holds 3 MiB of memory from the moment it is imported.

__all__ = [
    "MAX_PIXELS",
    "ImagePart",
    "Prepared",
    "Skipped",
    "TextPart",
    "fence_language",
    "prepare",
    "text_for_prompt",
]

MAX_PIXELS: Final = 50_000_000
"""Most pixels decoded for one image (about 200 MB as RGBA). A JPEG is decoded at 1/2, 1/4 or
1/8 scale when that still exceeds the output, so a 108-megapixel phone photo passes; Pillow
itself refuses anything over twice its ``MAX_IMAGE_PIXELS`` (about 179 megapixels) on open."""

JPEG_QUALITY: Final = 85

_IMAGE_FORMATS: Final = ("PNG", "JPEG", "WEBP", "GIF")
_LOSSLESS_FORMATS: Final = frozenset({"PNG", "GIF"})
_SUPPORTED_IMAGE_TYPES: Final = frozenset({"png", "jpeg", "jpg", "pjpeg", "webp", "gif"})
_SUPPORTED_IMAGE_EXTENSIONS: Final = frozenset({"png", "jpg", "jpeg", "jfif", "webp", "gif"})
_OTHER_IMAGE_EXTENSIONS: Final = frozenset(
    {"bmp", "tif", "tiff", "heic", "heif", "avif", "ico", "jxl", "psd", "raw", "cr2", "nef", "dng"}
)
_BOMS: Final = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its BOM starts the same way
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# Extension -> fence language. Also what "looks like text" when a file fails to decode (the
# user is then told to save it as UTF-8 rather than that it is not text).
_LANGUAGES: Final = {
    **dict.fromkeys(["txt", "text", "log", "out", "conf", "env", "lock"], "text"),
    **dict.fromkeys(["md", "markdown"], "markdown"),
    **dict.fromkeys(["py", "pyi", "pyw"], "python"),
    **dict.fromkeys(["js", "mjs", "cjs"], "javascript"),
    **dict.fromkeys(["ts", "mts", "cts"], "typescript"),
    **dict.fromkeys(["json", "jsonl", "ndjson", "geojson"], "json"),
    **dict.fromkeys(["yaml", "yml"], "yaml"),
    **dict.fromkeys(["ini", "cfg", "properties"], "ini"),
    **dict.fromkeys(["sh", "bash", "zsh"], "bash"),
    **dict.fromkeys(["c", "h"], "c"),
    **dict.fromkeys(["cpp", "cc", "cxx", "hpp", "hh", "hxx"], "cpp"),
    **dict.fromkeys(["html", "htm"], "html"),
    **dict.fromkeys(["xml", "svg", "xsd", "plist"], "xml"),
    **dict.fromkeys(["diff", "patch"], "diff"),
    **dict.fromkeys(["ex", "exs"], "elixir"),
    "csv": "csv", "tsv": "tsv", "toml": "toml", "rs": "rust", "go": "go", "java": "java",
    "kt": "kotlin", "kts": "kotlin", "cs": "csharp", "css": "css", "scss": "scss", "sql": "sql",
    "rb": "ruby", "php": "php", "lua": "lua", "swift": "swift", "r": "r", "pl": "perl",
    "ps1": "powershell", "bat": "batch", "cmd": "batch", "tsx": "tsx", "jsx": "jsx",
    "vue": "vue", "svelte": "svelte", "scala": "scala", "hs": "haskell", "dart": "dart",
    "zig": "zig", "nim": "nim", "jl": "julia", "clj": "clojure", "erl": "erlang", "tf": "hcl",
    "nix": "nix", "proto": "protobuf", "graphql": "graphql", "gql": "graphql", "tex": "latex",
    "rst": "rst", "gradle": "groovy", "groovy": "groovy", "asm": "asm", "s": "asm",
    "cmake": "cmake", "mk": "makefile", "dockerfile": "dockerfile", "ipynb": "json",
}  # fmt: skip
_LANGUAGES_BY_NAME: Final = {
    "dockerfile": "dockerfile", "containerfile": "dockerfile", "makefile": "makefile",
    "cmakelists.txt": "cmake", "justfile": "makefile", ".gitignore": "text",
}  # fmt: skip
_TEXT_TYPES: Final = frozenset(
    f"application/{sub}"
    for sub in (
        "json", "xml", "yaml", "x-yaml", "toml", "javascript", "x-javascript", "typescript",
        "x-sh", "x-shellscript", "x-python", "sql", "x-httpd-php", "ld+json", "x-ndjson",
    )
) | {"image/svg+xml"}  # fmt: skip
# What a file the bot can't read is, for the sentence that says so.
_KINDS: Final = {
    **dict.fromkeys(["pdf"], "a PDF"),
    **dict.fromkeys(["zip", "7z", "rar", "tar", "gz", "tgz", "bz2", "xz", "zst"], "an archive"),
    **dict.fromkeys(["exe", "dll", "msi", "apk", "dmg", "so", "bin", "jar", "app"], "a program"),
    **dict.fromkeys(["mp3", "wav", "ogg", "flac", "m4a", "opus", "aac", "wma"], "audio"),
    **dict.fromkeys(["mp4", "mov", "webm", "mkv", "avi", "wmv", "m4v"], "a video"),
    **dict.fromkeys(["doc", "docx", "odt", "pages"], "a word-processor document"),
    **dict.fromkeys(["xls", "xlsx", "ods", "numbers"], "a spreadsheet"),
    **dict.fromkeys(["ppt", "pptx", "odp", "key"], "a presentation"),
    **dict.fromkeys(["ttf", "otf", "woff", "woff2"], "a font"),
    **dict.fromkeys(["sqlite", "db", "sqlite3"], "a database"),
}
_KINDS_BY_TYPE: Final = {
    "application/pdf": "a PDF", "application/zip": "an archive", "audio": "audio",
    "video": "a video", "font": "a font",
}  # fmt: skip
_BACKTICK_RUN: Final = re.compile("`+")


@dataclass(frozen=True)
class ImagePart:
    """An image ready for Ollama's ``images`` (base64 of ``data``): PNG or JPEG bytes."""

    filename: str
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class TextPart:
    """A text file as the model will read it (see :func:`text_for_prompt`)."""

    filename: str
    text: str
    truncated: bool  # only the first ``len(text)`` characters were kept


@dataclass(frozen=True)
class Skipped:
    """A file that is not used, and the sentence (naming it) that tells the user why."""

    filename: str
    reason: str


@dataclass(frozen=True)
class Prepared:
    """Every file of a message, sorted; each kind keeps the order the files came in."""

    images: tuple[ImagePart, ...]
    texts: tuple[TextPart, ...]
    skipped: tuple[Skipped, ...]


def prepare(
    files: Sequence[tuple[str, str | None, bytes]],
    *,
    max_images: int = 4,
    max_side: int = 1024,
    max_text_chars: int = 20_000,
    max_bytes: int = 10_000_000,
    max_pixels: int = MAX_PIXELS,
) -> Prepared:
    """Sort a message's attachments, ``(filename, content_type or None, data)``, into images,
    text files and skipped files (see the module's docstring for the rules).

    Never raises because of a file's contents. Raises ``ValueError`` for limits that make no
    sense (a negative count, a side below 1).
    """
    if min(max_images, max_text_chars, max_bytes) < 0 or min(max_side, max_pixels) < 1:
        raise ValueError("limits must be non-negative, max_side and max_pixels positive")
    images: list[ImagePart] = []
    texts: list[TextPart] = []
    skipped: list[Skipped] = []
    chars_left = max_text_chars
    for name, content_type, data in files:
        outcome: ImagePart | TextPart | Skipped
        if len(data) > max_bytes:
            outcome = Skipped(name, say.attachment_too_big(name, len(data), max_bytes))
        elif _is_image(data):
            # Over the limit, an image is not even decoded (nor counted if it fails to decode).
            if len(images) >= max_images:
                outcome = Skipped(name, say.attachment_too_many_images(name, max_images))
            else:
                outcome = _image(name, data, max_side=max_side, max_pixels=max_pixels)
        else:
            outcome = _not_image(name, content_type, data)
        if isinstance(outcome, ImagePart):
            images.append(outcome)
        elif isinstance(outcome, Skipped):
            skipped.append(outcome)
        elif chars_left <= 0:
            skipped.append(Skipped(name, say.attachment_over_text_limit(name, max_text_chars)))
        else:
            cut = len(outcome.text) > chars_left
            texts.append(TextPart(name, outcome.text[:chars_left], truncated=cut))
            chars_left -= len(texts[-1].text)
    return Prepared(tuple(images), tuple(texts), tuple(skipped))


def text_for_prompt(part: TextPart) -> str:
    """The file as it goes into the user's message: its name, the text in a fenced block, and,
    if it was cut, a line saying how much was read.

    The fence is longer than any run of backticks in the text, so nothing inside can close it
    (a closing fence must be at least as long as the opening one), and the language comes from
    the extension (:func:`fence_language`).
    """
    longest = max((len(run) for run in _BACKTICK_RUN.findall(part.text)), default=0)
    fence = "`" * max(3, longest + 1)
    body = part.text if part.text.endswith("\n") or not part.text else part.text + "\n"
    lines = [f"{_one_line(part.filename)}:", f"{fence}{fence_language(part.filename)}"]
    block = "\n".join(lines) + "\n" + body + fence
    if part.truncated:
        block += "\n" + say.attachment_text_cut(_one_line(part.filename), len(part.text))
    return block


def fence_language(filename: str) -> str:
    """The code block language for a file name ("" when the extension is not known)."""
    path = PurePosixPath(filename.replace("\\", "/"))
    by_name = _LANGUAGES_BY_NAME.get(path.name.lower())
    return by_name or _LANGUAGES.get(path.suffix.lower().removeprefix("."), "")


# --------------------------------------------------------------------------------------------
# Images


def _is_image(data: bytes) -> bool:
    """Whether the bytes open as one of the four formats (Pillow reads only the header here).

    A decompression bomb counts: Pillow refuses it on open, and :func:`_image` says so.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS):
            return True
    except Image.DecompressionBombError:
        return True
    # Pillow raises many kinds of errors on bytes it can't use (OSError, ValueError,
    # SyntaxError, struct.error, EOFError...); all mean "not one of our images".
    except Exception:
        return False


def _image(name: str, data: bytes, *, max_side: int, max_pixels: int) -> ImagePart | Skipped:
    """The image decoded, downscaled and re-encoded, or why not (never an exception)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS) as image:
            return _reencode(name, image, max_side=max_side, max_pixels=max_pixels)
    except Image.DecompressionBombError:
        return Skipped(name, say.attachment_image_too_large(name, max_pixels))
    # A truncated or corrupt image opens (the header is fine) and fails while decoding, with
    # whatever error the codec raises; MemoryError included: one image must not end a reply.
    except Exception:
        return Skipped(name, say.attachment_image_damaged(name))


def _reencode(
    name: str, image: Image.Image, *, max_side: int, max_pixels: int
) -> ImagePart | Skipped:
    from PIL import Image, ImageOps

    source, target = image.format, _fitted(image.size, max_side)
    # A JPEG can be decoded at 1/2, 1/4 or 1/8 scale for almost nothing; asking for the output
    # size makes the decoder pick the smallest scale still at least that large (a 4000x3000
    # photo is decoded at 2000x1500: a quarter of the memory and of the time). ``box`` is the
    # original picture's area in the decoded pixels (the scaled edge pixels are partial).
    drafted = image.draft(None, target)
    if image.width * image.height > max_pixels:  # checked before a single pixel is decoded
        return Skipped(name, say.attachment_image_too_large(name, max_pixels))
    image.load()
    image = _rgb_or_rgba(image)  # before resizing: a palette image can't be filtered
    if image.size != target or drafted is not None:
        box = drafted[1] if drafted is not None else None
        image = image.resize(target, Image.Resampling.LANCZOS, box=box, reducing_gap=2.0)
    # Rotated last, when it is cheap; resize keeps the EXIF that says how. Damaged EXIF: the
    # picture itself is fine, so it is used as stored.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    if image.mode == "RGBA" and image.getchannel("A").getextrema()[0] == 255:
        image = image.convert("RGB")  # an alpha channel that nothing uses (phone screenshots)
    out = io.BytesIO()
    # Saved without EXIF or any other metadata (Pillow writes only what it is given).
    if image.mode == "RGBA" or source in _LOSSLESS_FORMATS:
        image.save(out, "PNG")
    else:
        image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return ImagePart(name, out.getvalue(), image.width, image.height)


def _fitted(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down (never up) so that its long side is at most ``max_side``."""
    width, height = size
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _rgb_or_rgba(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image may be transparent: what JPEG and PNG both can hold."""
    if image.mode.startswith("I"):
        # 16-bit grey PNGs: a plain conversion clips every value above 255 to white.
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    transparent = "A" in image.getbands() or "transparency" in image.info
    wanted = "RGBA" if transparent else "RGB"
    return image if image.mode == wanted else image.convert(wanted)


# --------------------------------------------------------------------------------------------
# Text and everything else


def _not_image(name: str, content_type: str | None, data: bytes) -> TextPart | Skipped:
    """A file that is not one of the four image formats: text, or why it is not used."""
    media_type, charset = _parse_content_type(content_type)
    extension = PurePosixPath(name.replace("\\", "/")).suffix.lower().removeprefix(".")
    claimed = media_type.removeprefix("image/") if media_type.startswith("image/") else ""
    if claimed == "svg+xml" or extension == "svg":
        pass  # SVG is XML text, read as such
    elif extension in _SUPPORTED_IMAGE_EXTENSIONS or claimed in _SUPPORTED_IMAGE_TYPES:
        return Skipped(name, say.attachment_image_damaged(name))
    elif extension in _OTHER_IMAGE_EXTENSIONS or claimed:
        kind = (extension if extension in _OTHER_IMAGE_EXTENSIONS else claimed).upper()
        return Skipped(name, say.attachment_image_unsupported(name, kind))
    text = _decoded(data, charset)
    if text is not None:
        return TextPart(name, text, truncated=False)
    looks_like_text = (
        media_type.startswith("text/") or media_type in _TEXT_TYPES or bool(fence_language(name))
    )
    if looks_like_text and b"\0" not in data:
        return Skipped(name, say.attachment_not_utf8(name))
    return Skipped(name, say.attachment_binary(name, _kind(extension, media_type)))


def _parse_content_type(content_type: str | None) -> tuple[str, str | None]:
    """``"text/plain; charset=UTF-8"`` -> ``("text/plain", "UTF-8")``."""
    media_type, *params = (content_type or "").split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return media_type.strip().lower(), charset


def _decoded(data: bytes, charset: str | None) -> str | None:
    """The text, or ``None`` if the bytes are not text: they don't decode, or hold a NUL."""
    encoding = next((codec for bom, codec in _BOMS if data.startswith(bom)), None)
    for candidate in (encoding, charset, "utf-8"):
        if candidate is None:
            continue
        try:
            # bytes.decode refuses codecs that are not text encodings ("base64", "zlib"...),
            # so a hostile charset parameter can't make this anything but a decode.
            text = data.decode(candidate)
        except LookupError:
            continue  # an unknown charset: try the next candidate
        except ValueError:
            return None  # UnicodeDecodeError, or a codec refusing its input
        return None if "\0" in text else text
    return None


def _kind(extension: str, media_type: str) -> str | None:
    """What a file is, in words ("a PDF"), when the name or content type says."""
    if extension in _KINDS:
        return _KINDS[extension]
    return _KINDS_BY_TYPE.get(media_type) or _KINDS_BY_TYPE.get(media_type.partition("/")[0])


def _one_line(name: str) -> str:
    """A file name made safe for a line of the prompt: no line breaks or other control
    characters, no backticks (either could let a name open a code block of its own)."""
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in name).replace("`", "'")
