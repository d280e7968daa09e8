"""Hostile images for tests and benchmarks: files small on disk that would cost gigabytes decoded or resized."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A real 1-bit PNG of ``width`` x ``height`` black pixels: about 110 kB on disk, 2.7 GB decoded as RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def long_png(path: Path) -> Path:
    """12000x1 grey pixels: 93 bytes, but its short side scaled up to 224 px once cost 4.2 GB in predict."""
    from PIL import Image

    Image.new("L", (12000, 1), 128).save(path)
    return path
