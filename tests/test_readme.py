"""The README's engine example runs as written."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_engine_example_runs() -> None:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "Calendar" in b)
    scope: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert [type(e).__name__ for e in scope["events"]] == ["HoldPlaced", "HoldConfirmed"]  # type: ignore[attr-defined]
    assert scope["booking"].start == scope["start"]  # type: ignore[attr-defined]
