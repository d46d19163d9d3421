"""core/io/png.py: plain 8-bit PNGs decoded by imagecodecs give exactly Pillow's pixels, and every
other PNG (palette, transparency, 16-bit, 1-bit, animated, damaged, over the pixel limit) is left to
Pillow's path, with its result or its error unchanged."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patchfold.errors import PatchfoldError
from patchfold.io import png, read
from PIL import Image, PngImagePlugin

pytest.importorskip("imagecodecs")

#: Pillow mode -> channels, for the colour types the fast path decodes.
PLAIN_MODES = {"L": 1, "RGB": 3, "RGBA": 4}


def pillow_read(path: Path, monkeypatch: pytest.MonkeyPatch, max_pixels: int = read.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """read_image through Pillow alone: the reference."""
    with monkeypatch.context() as patched:
        patched.setattr(read, "read_plain_png", lambda *_: None)
        return read.read_image(path, max_pixels)


@st.composite
def plain_pngs(draw: st.DrawFn) -> tuple[np.ndarray, str, dict]:
    mode = draw(st.sampled_from(sorted(PLAIN_MODES)))
    height, width = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    shape = (height, width) if PLAIN_MODES[mode] == 1 else (height, width, PLAIN_MODES[mode])
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    if draw(st.booleans()):  # smooth images compress with other filters than noise
        pixels = np.cumsum(pixels, axis=0, dtype=np.uint8)
    options = {"compress_level": draw(st.integers(0, 9)), "optimize": draw(st.booleans())}
    return pixels, mode, options


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=plain_pngs(), chunks=st.lists(st.sampled_from(["gAMA", "text", "sRGB"]), max_size=3))
def test_plain_png_is_pillows_pixels(case, chunks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels, mode, options = case
    info = PngImagePlugin.PngInfo()
    for chunk in chunks:  # ancillary chunks neither reader applies
        if chunk == "text":
            info.add_text("comment", "patchfold")
        else:
            info.add(chunk.encode(), (45455).to_bytes(4, "big") if chunk == "gAMA" else b"\x00")
    path = tmp_path / "plain.png"
    Image.fromarray(pixels, mode=mode).save(path, pnginfo=info, **options)
    assert png.plain_png(path.read_bytes()) is not None
    fast = png.read_plain_png(path, read.DEFAULT_MAX_PIXELS)
    assert fast is not None, "a plain PNG takes the fast path"
    got = read.read_image(path)
    want = pillow_read(path, monkeypatch)
    assert got.dtype == want.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def _palette(path: Path) -> None:
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8) % 7).convert("P").save(path)


def _palette_transparent(path: Path) -> None:
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8) % 7, mode="L").convert("P")
    image.save(path, transparency=3)


def _rgb_transparent(path: Path) -> None:
    Image.fromarray(np.full((5, 4, 3), 9, np.uint8)).save(path, transparency=(9, 9, 9))


def _grey16(path: Path) -> None:
    Image.fromarray(np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000).save(path)


def _rgb16(path: Path) -> None:
    import imagecodecs

    path.write_bytes(imagecodecs.png_encode(np.arange(72, dtype=np.uint16).reshape(4, 6, 3) * 900))


def _grey_alpha(path: Path) -> None:
    Image.fromarray(np.arange(60, dtype=np.uint8).reshape(5, 6, 2), mode="LA").save(path)


def _bilevel(path: Path) -> None:
    Image.fromarray(np.eye(9, dtype=bool)).save(path)


def _animated(path: Path) -> None:
    frames = [Image.fromarray(np.full((6, 6, 3), value, np.uint8)) for value in (10, 200)]
    frames[0].save(path, save_all=True, append_images=frames[1:], default_image=False)


OTHER_PNGS = {
    "palette": _palette,
    "palette with transparency": _palette_transparent,
    "RGB with a tRNS chunk": _rgb_transparent,
    "16-bit grey": _grey16,
    "16-bit RGB": _rgb16,
    "1-bit": _bilevel,
    "grey + alpha": _grey_alpha,
    "animated": _animated,
}


@pytest.mark.parametrize("name", sorted(OTHER_PNGS))
def test_other_pngs_are_left_to_pillow(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "other.png"
    OTHER_PNGS[name](path)
    assert png.read_plain_png(path, read.DEFAULT_MAX_PIXELS) is None
    np.testing.assert_array_equal(read.read_image(path), pillow_read(path, monkeypatch))


def _plain(path: Path) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "patchfold")
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path, pnginfo=info)
    return path.read_bytes()


def test_damaged_pngs_fail_as_with_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "damaged.png"
    data = _plain(path)
    text = data.index(b"tEXt")
    damaged = {
        "truncated pixel data": data[: len(data) // 2],
        "a damaged text chunk": data[: text + 6] + bytes([data[text + 6] ^ 1]) + data[text + 7 :],
        "a damaged header": data[:20] + bytes([data[20] ^ 1]) + data[21:],
    }
    for name, content in damaged.items():
        path.write_bytes(content)
        assert png.read_plain_png(path, read.DEFAULT_MAX_PIXELS) is None, name
        with pytest.raises(PatchfoldError) as fast:
            read.read_image(path)
        with pytest.raises(PatchfoldError) as pillow:
            pillow_read(path, monkeypatch)
        assert str(fast.value) == str(pillow.value), name


def test_damaged_pixel_data_is_an_error(tmp_path: Path) -> None:
    """A flipped byte inside the compressed pixels: libpng's CRC check refuses it, so does Pillow."""
    path = tmp_path / "pixels.png"
    data = bytearray(_plain(path))
    data[data.index(b"IDAT") + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    assert png.read_plain_png(path, read.DEFAULT_MAX_PIXELS) is None
    with pytest.raises(PatchfoldError, match=r"pixels\.png"):
        read.read_image(path)


def test_the_pixel_limit_is_pillows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    _plain(path)
    assert png.read_plain_png(path, 40 * 30 - 1) is None
    with pytest.raises(PatchfoldError, match="over"):
        read.read_image(path, 40 * 30 - 1)


def test_not_a_png(tmp_path: Path) -> None:
    path = tmp_path / "scene.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path, format="JPEG")
    assert png.plain_png(path.read_bytes()) is None
    assert read.read_image(path).shape == (3, 4, 4)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _hand_made(*middle: bytes, after: bytes = b"", tail: bytes | None = None) -> bytes:
    """An 8x8 RGB PNG with ``middle`` chunks before its pixels and ``after`` chunks after them."""
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    head = png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"".join(b"\0" + row.tobytes() for row in pixels)))
    return head + b"".join(middle) + idat + after + (_chunk(b"IEND", b"") if tail is None else tail)


HAND_MADE = {  # each left to Pillow: damaged, or holding what the fast path does not read
    "truncated after the pixels": _hand_made(after=_chunk(b"tEXt", b"k\0" + b"v" * 100)[:40], tail=b""),
    "a short pHYs": _hand_made(_chunk(b"pHYs", b"\0\0")),
    "a zTXt": _hand_made(_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a"))),
    "an iCCP profile": _hand_made(_chunk(b"iCCP", b"p\0\0" + zlib.compress(b"\0" * 1000))),
    "an inflate bomb before the pixels": _hand_made(_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"\0" * 2**22, 9))),
    "a text keyword too long": _hand_made(_chunk(b"tEXt", b"k" * 80 + b"\0v")),
    "an unknown chunk": _hand_made(_chunk(b"prVt", b"x")),
    "data after IEND": _hand_made(tail=_chunk(b"IEND", b"") + b"junk"),
    "no IEND": _hand_made(tail=b""),
    "IDAT runs apart": _hand_made(after=_chunk(b"tIME", b"\0" * 7) + _chunk(b"IDAT", zlib.compress(b""))),
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_hand_made_pngs_go_to_pillow(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's result or its error, unchanged (the red-team's cases: libspng read some of these
    where Pillow refuses them, and inflated a text bomb)."""
    path = tmp_path / "hand.png"
    path.write_bytes(HAND_MADE[name])
    assert png.plain_png(path.read_bytes()) is None
    assert png.read_plain_png(path, read.DEFAULT_MAX_PIXELS) is None
    try:
        want = pillow_read(path, monkeypatch)
    except PatchfoldError as error:
        with pytest.raises(PatchfoldError) as caught:
            read.read_image(path)
        assert str(caught.value) == str(error)
    else:
        np.testing.assert_array_equal(read.read_image(path), want)


def test_a_plain_hand_made_png_takes_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plain.png"
    text = _chunk(b"tEXt", b"Software\0patchfold")
    path.write_bytes(_hand_made(_chunk(b"gAMA", (45455).to_bytes(4, "big")), text, after=text))
    assert png.read_plain_png(path, read.DEFAULT_MAX_PIXELS) is not None
    np.testing.assert_array_equal(read.read_image(path), pillow_read(path, monkeypatch))
