"""Copy the latest benchmark tables (benchmarks/results/<name>.md) into README.md between markers.

    python -m benchmarks.update_readme

A README section `<!-- bench:NAME -->` ... `<!-- /bench:NAME -->` is replaced by the body of
`benchmarks/results/NAME.md` (its first heading dropped), so the README shows exactly what the
benchmark last wrote.
"""

from __future__ import annotations

import re

from .common import RESULTS, ROOT


def rebase_images(body: str, folder: str) -> str:
    """Point a table's relative image links (written beside it) at `folder` from the README."""
    return re.sub(r"(!\[[^\]]*\]\()(?![a-z]+:|/)([^)]+)\)", rf"\1{folder}/\2)", body)


def main() -> None:
    """Rewrite README.md's benchmark sections in place."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    for m in re.finditer(r"<!-- bench:([\w-]+) -->", text):
        name = m.group(1)
        md = RESULTS / f"{name}.md"
        if not md.exists():
            print(f"no {md}; leaving the {name} section as it is")
            continue
        body = "\n".join(
            ln for ln in md.read_text().splitlines() if not ln.startswith("# ")
        ).strip()
        body = rebase_images(body, str(md.parent.relative_to(ROOT)))
        pattern = re.compile(rf"(<!-- bench:{name} -->).*?(<!-- /bench:{name} -->)", re.S)
        text = pattern.sub(lambda mm, b=body: f"{mm.group(1)}\n{b}\n{mm.group(2)}", text)
        print(f"updated {name}")
    readme.write_text(text)


if __name__ == "__main__":
    main()
