"""Generated blocks in README files: the text between a begin and an end marker is owned by a
script (figures, the kernel-resource table, the gpu-check budget) and rewritten by it, never by hand."""
from __future__ import annotations

import re
from pathlib import Path


def replace_block(path: Path, begin: str, end: str, body: str) -> bool:
    """Put `body` between the markers in `path` (written only when it changes); False if the
    file lacks the markers."""
    path = Path(path)
    text = path.read_text()
    if begin not in text or end not in text:
        return False
    block = f"{begin}\n{body}\n{end}"
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    if new != text:
        path.write_text(new)
    return True
