"""Write nagare/settings.py from nagare.config.OPTIONS: `python3 tests/generate_settings.py`.

`tests/test_config.py` fails while the committed file differs from what this writes.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True, slots=True)
class _Placeholder:
    """Stands in for the generated class while nagare.config is imported, so that the file can
    be written even when the committed one is missing or broken."""


def main() -> None:
    placeholder = types.ModuleType("nagare.settings")
    placeholder.Settings = _Placeholder  # type: ignore[attr-defined]
    sys.modules["nagare.settings"] = placeholder
    from nagare.config import SETTINGS_PATH, settings_module_source

    (ROOT / SETTINGS_PATH).write_text(settings_module_source(), encoding="utf-8")
    print(f"wrote {SETTINGS_PATH}")


if __name__ == "__main__":
    main()
