"""No dead files in the console: every static asset and every template is used."""

from __future__ import annotations

from pathlib import Path

from hub.ui.render import STATIC, TEMPLATES

UI = TEMPLATES.parent


def _texts(*patterns: str) -> str:
    return "\n".join(p.read_text() for pattern in patterns for p in UI.rglob(pattern))


def test_every_static_asset_is_served_to_a_page() -> None:
    templates = _texts("*.html")
    for path in STATIC.rglob("*"):
        if path.is_dir() or path.name == "README.md" or path.suffix == ".LICENSE":
            continue
        url = "/ui/static/" + path.relative_to(STATIC).as_posix()
        assert url in templates, f"{url} is shipped but no page loads it"


def test_every_template_is_rendered_or_included() -> None:
    code = _texts("*.py", "*.html")
    for path in TEMPLATES.glob("*.html"):
        used = f'"{path.name}"' in code or f"'{path.name}'" in code
        assert used, f"{path.name} is never rendered"


def test_vendored_licences_belong_to_shipped_files() -> None:
    for licence in Path(STATIC, "vendor").glob("*.LICENSE"):
        assert any(
            p.name.startswith(licence.stem + ".") and p.suffix == ".js"
            for p in licence.parent.iterdir()
        ), licence.name
