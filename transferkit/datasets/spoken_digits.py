"""Spoken digits synthesised with Debian's espeak-ng: a real-speech benchmark that needs no download.

Each speaker is an espeak-ng voice (an English accent plus a voice variant); every clip also draws its
speaking rate and pitch from the seed. Train and test speakers are disjoint, so a model is scored on voices
it never heard. The same seed writes the same files.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

from ..errors import DataError
from . import require

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "whisper"]


def espeak() -> str:
    require("spoken_digits")  # espeak-ng: one line saying how to install it
    return shutil.which("espeak-ng")


def speakers(seed: int = 0) -> list[str]:
    """Every accent x variant voice (``en-us+m3`` ...), in a seeded order."""
    voices = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    random.Random(seed).shuffle(voices)
    return voices


def synthesize(text: str, voice: str, path: Path, speed: int = 160, pitch: int = 50) -> None:
    """One wav file (22,050 Hz mono) of ``text`` spoken by ``voice``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                       capture_output=True, text=True)
    if r.returncode != 0 or not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"espeak-ng failed for voice {voice!r}: {r.stderr.strip()[:200] or 'no output'}")


def build_spoken_digits(dest: str | Path, train_per_class: int = 5, test_per_class: int = 20,
                        train_speakers: int = 20, test_speakers: int = 10, seed: int = 0,
                        words: list[str] | None = None) -> Path:
    """Write ``dest/train/<digit>/*.wav`` and ``dest/test/<digit>/*.wav`` with disjoint speakers.

    ``train_per_class`` clips per digit come from ``train_speakers`` voices, ``test_per_class`` from
    ``test_speakers`` other voices; rate (120-220 words/min) and pitch (20-80) vary per clip. Refuses a
    non-empty ``dest``.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} is not empty: choose a new folder (nothing is overwritten).")
    voices = speakers(seed)
    if train_speakers + test_speakers > len(voices):
        raise DataError(f"Only {len(voices)} voices exist: ask for fewer than {train_speakers} + "
                        f"{test_speakers} speakers.")
    pools = {"train": voices[:train_speakers], "test": voices[train_speakers : train_speakers + test_speakers]}
    rng = random.Random(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for word in words or DIGITS:
            for i in range(per_class):
                voice = pools[split][(i + rng.randrange(len(pools[split]))) % len(pools[split])]
                speed, pitch = rng.randint(120, 220), rng.randint(20, 80)
                name = f"{word}_{i:03d}_{voice.replace('+', '_')}_s{speed}_p{pitch}.wav"
                synthesize(word, voice, dest / split / word / name, speed, pitch)
    return dest
