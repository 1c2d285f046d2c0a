"""Attachments: images made ready for a vision model, text files inlined, the rest refused by
name. Every image here is made in memory with Pillow."""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.attachments import (
    MAX_PIXELS,
    ImagePart,
    Prepared,
    TextPart,
    fence_language,
    prepare,
    text_for_prompt,
)

# --------------------------------------------------------------------------------------------
# Helpers

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def photo(width: int, height: int, fmt: str = "JPEG") -> bytes:
    """A noisy gradient: compresses like a photo, not like a flat test card."""
    gradient = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 40)
    rgb = Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.ROTATE_180)))
    return encode(rgb, fmt, quality=90) if fmt in ("JPEG", "WEBP") else encode(rgb, fmt)


def decoded(part: ImagePart) -> Image.Image:
    image = Image.open(io.BytesIO(part.data))
    assert image.size == (part.width, part.height)
    return image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def grey_png_bomb(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A valid 8-bit grey PNG of black pixels: a few KB that decode to ``width * height``
    bytes. With ``rows``, only that many rows of data follow the header (Pillow refuses the
    biggest ones on the header alone, so the rest need not be made)."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def one(prepared: Prepared) -> ImagePart | TextPart | str:
    """The only result of a one-file ``prepare``: the part, or the skip reason."""
    results = [*prepared.images, *prepared.texts, *(s.reason for s in prepared.skipped)]
    assert len(results) == 1, prepared
    return results[0]


def skip_reason(name: str, data: bytes, content_type: str | None = None, **limits: int) -> str:
    reason = one(prepare([(name, content_type, data)], **limits))
    assert isinstance(reason, str), reason
    assert name in reason
    return reason


# --------------------------------------------------------------------------------------------
# Images


def test_a_4000x3000_photo_is_downscaled_to_1024x768_and_stays_jpeg() -> None:
    data = photo(4000, 3000)
    part = one(prepare([("IMG_0001.jpg", "image/jpeg", data)]))
    assert isinstance(part, ImagePart)
    assert (part.filename, part.width, part.height) == ("IMG_0001.jpg", 1024, 768)
    assert decoded(part).format == "JPEG"
    assert len(part.data) < len(data) // 4


def test_a_png_with_transparency_stays_png_with_its_alpha() -> None:
    image = Image.new("RGBA", (2048, 512), (*RED, 255))
    image.paste((0, 0, 0, 0), (0, 0, 1024, 512))  # the left half is transparent
    part = one(prepare([("logo.png", "image/png", encode(image, "PNG"))]))
    assert isinstance(part, ImagePart)
    out = decoded(part)
    assert (out.format, out.mode, out.size) == ("PNG", "RGBA", (1024, 256))
    assert out.getpixel((10, 10)) == (0, 0, 0, 0)
    assert out.getpixel((1000, 10)) == (*RED, 255)


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (64, 48), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    part = one(prepare([("party.gif", "image/gif", data)]))
    assert isinstance(part, ImagePart)
    out = decoded(part).convert("RGB")
    assert out.size == (64, 48)
    assert out.getpixel((32, 24)) == RED
    assert decoded(part).format == "PNG"  # few colours, lossless source: no JPEG blur


def test_a_webp_photo_is_read_and_sent_as_jpeg() -> None:
    part = one(prepare([("shot.webp", "image/webp", photo(1600, 1200, "WEBP"))]))
    assert isinstance(part, ImagePart)
    assert (part.width, part.height) == (1024, 768)
    assert decoded(part).format == "JPEG"


def test_a_webp_with_transparency_is_sent_as_png() -> None:
    image = Image.new("RGBA", (100, 100), (*BLUE, 128))
    part = one(prepare([("sticker.webp", None, encode(image, "WEBP", lossless=True))]))
    assert isinstance(part, ImagePart)
    assert decoded(part).format == "PNG"
    assert decoded(part).mode == "RGBA"


def test_an_exif_rotated_jpeg_comes_out_upright_without_its_exif() -> None:
    # Stored sideways, as a phone held upright stores it: left half red, right half blue, and
    # EXIF orientation 6 ("rotate 90° clockwise to display"). Upright, red is on top.
    stored = Image.new("RGB", (2400, 1200), RED)
    stored.paste(BLUE, (1200, 0, 2400, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = "PhoneMaker"  # Make: any metadata is dropped, GPS position included
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    part = one(prepare([("upright.jpg", "image/jpeg", data)]))
    assert isinstance(part, ImagePart)
    out = decoded(part).convert("RGB")
    assert out.size == (512, 1024)
    top, bottom = out.getpixel((256, 100)), out.getpixel((256, 900))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    assert dict(out.getexif()) == {}


def test_an_image_is_recognised_by_its_bytes_whatever_its_name_says() -> None:
    data = encode(Image.new("RGB", (10, 10), GREEN), "PNG")
    part = one(prepare([("notes.txt", "text/plain", data)]))
    assert isinstance(part, ImagePart)


def test_a_16_bit_grey_png_keeps_its_greys() -> None:
    data = encode(Image.new("I;16", (8, 8), 32768), "PNG")
    part = one(prepare([("scan.png", "image/png", data)]))
    assert isinstance(part, ImagePart)
    grey = decoded(part).convert("L").getpixel((4, 4))
    assert isinstance(grey, int) and 120 <= grey <= 136  # not clipped to white


def test_a_corrupt_png_is_skipped_with_a_sentence_naming_it() -> None:
    good = encode(Image.new("RGB", (300, 300), RED), "PNG")
    corrupt = good[:40] + bytes(len(good) - 40)
    reason = skip_reason("broken.png", corrupt, "image/png")
    assert "damaged" in reason


def test_a_truncated_jpeg_is_skipped_with_a_sentence_naming_it() -> None:
    data = photo(800, 600)
    reason = skip_reason("half.jpg", data[: len(data) // 2], "image/jpeg")
    assert "damaged or incomplete" in reason


def test_a_file_that_claims_to_be_an_image_but_is_text_is_skipped_as_damaged() -> None:
    assert "damaged" in skip_reason("cat.jpg", b"this is not a cat", None)
    assert "damaged" in skip_reason("cat", b"not a cat either", "image/png")


def test_other_image_formats_are_skipped_with_the_ones_that_work() -> None:
    reason = skip_reason("IMG_0042.heic", b"\x00\x00\x00\x18ftypheic", "image/heic")
    assert "HEIC" in reason and "PNG, JPEG, WebP and GIF" in reason


def test_a_decompression_bomb_is_skipped_without_decoding_it() -> None:
    # 56 megapixels of black in about 60 KB: over our cap, under Pillow's own limit.
    data = grey_png_bomb(8000, 7000)
    assert len(data) < 100_000
    reason = skip_reason("bomb.png", data, "image/png")
    assert "too many pixels" in reason and f"{MAX_PIXELS // 1_000_000} megapixels" in reason


def test_a_bomb_pillow_refuses_on_its_header_is_skipped_too() -> None:
    reason = skip_reason("huge.png", grey_png_bomb(20_000, 20_000, rows=10), "image/png")
    assert "too many pixels" in reason


def test_the_pixel_cap_counts_what_is_decoded_so_big_jpegs_pass() -> None:
    # A JPEG decodes at 1/4 scale here (500x375 pixels, under the cap); a PNG can't.
    limits = {"max_side": 500, "max_pixels": 1_000_000}
    jpeg = one(prepare([("big.jpg", None, photo(2000, 1500))], **limits))
    assert isinstance(jpeg, ImagePart) and (jpeg.width, jpeg.height) == (500, 375)
    assert "too many pixels" in skip_reason("big.png", photo(2000, 1500, "PNG"), **limits)


def test_a_20_mb_blob_is_skipped_as_too_big() -> None:
    reason = skip_reason("dump.bin", bytes(20_000_000))
    assert "20 MB" in reason and "10 MB" in reason


def test_only_max_images_images_are_used_and_the_others_are_named() -> None:
    files = [
        (f"pic{i}.png", "image/png", encode(Image.new("RGB", (8, 8)), "PNG")) for i in range(5)
    ]
    prepared = prepare(files, max_images=4)
    assert [part.filename for part in prepared.images] == [
        "pic0.png",
        "pic1.png",
        "pic2.png",
        "pic3.png",
    ]
    (skipped,) = prepared.skipped
    assert skipped.filename == "pic4.png"
    assert "pic4.png" in skipped.reason and "4 images" in skipped.reason


def test_a_damaged_image_does_not_take_the_place_of_a_good_one() -> None:
    good = photo(100, 100, "PNG")
    files = [
        ("bad.png", None, good[: len(good) // 2]),
        ("a.png", None, good),
        ("b.png", None, good),
    ]
    prepared = prepare(files, max_images=2)
    assert [part.filename for part in prepared.images] == ["a.png", "b.png"]
    assert [s.filename for s in prepared.skipped] == ["bad.png"]


# --------------------------------------------------------------------------------------------
# Text


def test_a_utf8_python_file_is_inlined_with_its_fence_language() -> None:
    source = "def greet(name: str) -> str:\n    return f'héllo {name} 👋'\n"
    part = one(prepare([("greet.py", "text/x-python; charset=utf-8", source.encode())]))
    assert part == TextPart("greet.py", source, truncated=False)
    assert text_for_prompt(part) == f"greet.py:\n```python\n{source}```"


def test_a_file_with_code_fences_inside_keeps_its_block_intact() -> None:
    readme = "# Use\n\n```sh\npip install x\n```\n\nInline ``code`` and ````four````.\n"
    part = one(prepare([("README.md", None, readme.encode())]))
    assert isinstance(part, TextPart)
    prompt = text_for_prompt(part)
    assert prompt == f"README.md:\n`````markdown\n{readme}`````"


def test_a_text_file_is_cut_at_the_cap_with_a_marker() -> None:
    log = "".join(f"line {i}\n" for i in range(1000))
    part = one(prepare([("server.log", "text/plain", log.encode())], max_text_chars=100))
    assert part == TextPart("server.log", log[:100], truncated=True)
    prompt = text_for_prompt(part)
    assert prompt.endswith("```\n[only the first 100 characters of server.log were read]")
    assert prompt.startswith("server.log:\n```text\n" + log[:100] + "\n```")


def test_text_files_beyond_the_cap_are_skipped_with_a_sentence() -> None:
    files = [("a.txt", None, b"x" * 60), ("b.txt", None, b"y" * 60), ("c.txt", None, b"z")]
    prepared = prepare(files, max_text_chars=100)
    assert prepared.texts == (
        TextPart("a.txt", "x" * 60, truncated=False),
        TextPart("b.txt", "y" * 40, truncated=True),
    )
    (skipped,) = prepared.skipped
    assert skipped.filename == "c.txt"
    assert "c.txt" in skipped.reason and "100 characters" in skipped.reason


def test_a_file_with_a_nul_byte_is_binary_even_if_it_says_text() -> None:
    reason = skip_reason("notes.txt", b"almost text\x00but not", "text/plain")
    assert "neither text nor an image" in reason


def test_a_zip_is_binary_and_named_as_an_archive() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("inside.txt", "hello")
    reason = skip_reason("project.zip", out.getvalue(), "application/zip")
    assert "an archive" in reason


def test_a_pdf_is_skipped_by_name() -> None:
    reason = skip_reason("report.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "application/pdf")
    assert reason.startswith("I can't read `report.pdf` (a PDF)")


def test_boms_are_honoured_and_dropped() -> None:
    text = "naïve café\n"
    for data in (b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16"), text.encode("utf-32")):
        assert one(prepare([("a.txt", None, data)])) == TextPart("a.txt", text, truncated=False)


def test_a_declared_charset_is_honoured() -> None:
    data = "café".encode("latin-1")
    part = one(prepare([("menu.txt", "text/plain; charset=ISO-8859-1", data)]))
    assert part == TextPart("menu.txt", "café", truncated=False)


def test_text_that_is_not_utf8_is_refused_with_a_way_out() -> None:
    reason = skip_reason("menu.txt", "café".encode("latin-1"), "text/plain")
    assert "UTF-8" in reason


def test_an_svg_is_read_as_xml_text() -> None:
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>'
    part = one(prepare([("dot.svg", "image/svg+xml", svg.encode())]))
    assert isinstance(part, TextPart)
    assert text_for_prompt(part).startswith("dot.svg:\n```xml\n")


def test_a_file_without_a_known_extension_that_decodes_is_text_without_a_language() -> None:
    part = one(prepare([("NOTES", None, b"remember the milk")]))
    assert isinstance(part, TextPart)
    assert text_for_prompt(part) == "NOTES:\n```\nremember the milk\n```"


def test_fence_languages_follow_extensions_and_well_known_names() -> None:
    assert fence_language("src/main.RS") == "rust"
    assert fence_language("Dockerfile") == "dockerfile"
    assert fence_language("config.yml") == "yaml"
    assert fence_language("archive.tar.gz") == ""


def test_a_file_name_cannot_open_a_code_block_in_the_prompt() -> None:
    prompt = text_for_prompt(TextPart("```evil\nname", "x", truncated=False))
    assert prompt.splitlines()[0] == "'''evil name:"


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        prepare([], max_side=0)
    with pytest.raises(ValueError):
        prepare([], max_images=-1)


# --------------------------------------------------------------------------------------------
# Properties

PROPERTY = settings(max_examples=300, deadline=None)
IMAGES = settings(max_examples=60, deadline=None)

TEXT_NAMES = st.sampled_from(["a.txt", "b.py", "c.md", "d.json", "e.log", "f", "g.csv"])
# No NUL (binary) and no U+FEFF, which at the start of a file is its byte-order mark.
texts = st.text(
    st.characters(exclude_characters="\x00\ufeff", exclude_categories=("Cs",)), max_size=80
)
text_files = st.lists(st.tuples(TEXT_NAMES, texts), max_size=8)


@PROPERTY
@given(text_files, st.integers(0, 300))
def test_text_files_share_the_cap_in_order(files: list[tuple[str, str]], cap: int) -> None:
    prepared = prepare([(n, None, t.encode()) for n, t in files], max_text_chars=cap)
    assert sum(len(part.text) for part in prepared.texts) <= cap
    # In order: the files read come first, each whole but the last, which may be cut...
    read = len(prepared.texts)
    for part, (name, text) in zip(prepared.texts, files, strict=False):
        assert part.filename == name
        assert text.startswith(part.text)
        assert part.truncated == (part.text != text)
    assert not any(part.truncated for part in prepared.texts[:-1])
    # ...then the ones the cap left no room for, each named in its sentence.
    assert [s.filename for s in prepared.skipped] == [name for name, _ in files[read:]]
    assert all(s.filename in s.reason for s in prepared.skipped)
    if prepared.skipped:
        assert sum(len(part.text) for part in prepared.texts) == cap


FENCE_LINE = re.compile(r"^ {0,3}(`{3,})")


@PROPERTY
@given(TEXT_NAMES, st.text(alphabet="`\n ab", max_size=60) | texts, st.booleans())
def test_text_for_prompt_always_closes_its_fence(name: str, text: str, truncated: bool) -> None:
    prompt = text_for_prompt(TextPart(name, text, truncated))
    lines = prompt.split("\n")
    assert lines[0] == f"{name}:"
    opening = FENCE_LINE.match(lines[1])
    assert opening is not None
    fence = opening.group(1)
    assert lines[1] == fence + fence_language(name)
    # The block closes at our fence and nowhere before: no line of the text can close it.
    end = len(lines) - 1 - truncated
    assert lines[end] == fence
    body = lines[2:end]
    assert not any(line.lstrip(" ").startswith(fence) for line in body)
    assert "\n".join(body) == text.removesuffix("\n")
    if truncated:
        assert lines[-1] == f"[only the first {len(text):,} characters of {name} were read]"


names = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)
content_types = st.none() | st.sampled_from(
    ["image/png", "image/jpeg", "text/plain", "text/plain; charset=utf-16", "application/pdf",
     "text/html; charset=base64", "text/plain; charset=nonsense", "image/svg+xml", ""]
)  # fmt: skip


@PROPERTY
@given(st.lists(st.tuples(names, content_types, st.binary(max_size=200)), max_size=6))
def test_prepare_never_raises_and_accounts_for_every_file(
    files: list[tuple[str, str | None, bytes]],
) -> None:
    prepared = prepare(files, max_text_chars=100)
    used = [*prepared.images, *prepared.texts, *prepared.skipped]
    assert sorted(p.filename for p in used) == sorted(name for name, _, _ in files)
    for skipped in prepared.skipped:
        assert skipped.reason.strip() and "Traceback" not in skipped.reason


def sample_images() -> dict[str, bytes]:
    rgba = Image.new("RGBA", (40, 30), (*RED, 128))
    return {
        "png": encode(rgba, "PNG"),
        "jpeg": photo(48, 32),
        "gif": encode(rgba.convert("P"), "GIF"),
        "webp": encode(rgba, "WEBP"),
    }


SAMPLES = sample_images()


@IMAGES
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_damaged_images_never_raise(fmt: str, data: st.DataObject) -> None:
    original = bytearray(SAMPLES[fmt])
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(original) - 1))
        original[at] = data.draw(st.integers(0, 255))
    damaged = bytes(original[: data.draw(st.integers(0, len(original)))])
    prepared = prepare([(f"x.{fmt}", None, damaged)], max_side=16)
    for part in prepared.images:
        assert max(decoded(part).size) <= 16


@IMAGES
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1"]),
    st.sampled_from(["PNG", "JPEG", "GIF", "WEBP"]),
    st.integers(1, 200),
)
def test_any_image_comes_out_within_max_side_with_its_shape(
    width: int, height: int, mode: str, fmt: str, max_side: int
) -> None:
    image = Image.new(mode, (width, height))
    if fmt == "JPEG" and mode not in ("RGB", "L", "1"):
        image = image.convert("RGB")
    part = one(prepare([("img", None, encode(image, fmt))], max_side=max_side))
    assert isinstance(part, ImagePart)
    assert max(part.width, part.height) == min(max(width, height), max_side)
    # The aspect ratio is kept, to the rounding of the short side.
    if width >= height:
        assert abs(part.height - height * part.width / width) <= 1
    else:
        assert abs(part.width - width * part.height / height) <= 1
    out = decoded(part)
    assert out.format == ("PNG" if fmt in ("PNG", "GIF") or out.mode == "RGBA" else "JPEG")


def test_the_benchmark_still_runs() -> None:
    from bench import attachments as bench

    run = bench.measure_once(bench.ours, bench.make_photo(400, 300))
    assert run.cpu_s > 0 and run.tracemalloc_peak_mb > 0


def test_with_max_images_0_every_image_is_skipped_plainly() -> None:
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    reason = skip_reason("cat.png", data, "image/png", max_images=0)
    assert reason == "I didn't look at `cat.png`: I can't look at images here."
