"""``docs/benchmark_config.md``: the config reference is generated from the parser's key sets, so it cannot drift.

Everything here is in-process string work (no training, well under a second once the package is imported).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from anomalib_crr.benchmark import config, schema_docs

PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmark_config.md"


def test_every_key_the_parser_allows_is_described() -> None:
    """A key added to a parser's allowed set (or a logger form) without a description fails here."""
    assert schema_docs.missing_descriptions() == []


def test_committed_config_reference_matches_the_generated_one() -> None:
    """The committed page is what ``python -m anomalib_crr.benchmark.schema_docs`` writes today."""
    assert PAGE.read_text() == schema_docs.render(), (
        "docs/benchmark_config.md is stale: run python -m anomalib_crr.benchmark.schema_docs"
    )


def test_the_page_uses_the_parsers_defaults() -> None:
    """Defaults on the page are read from the constants load_config uses, not typed by hand."""
    page = schema_docs.render()
    assert f"| `runs` | int (>= 10) | `{config.TIMING_DEFAULTS['runs']}` |" in page
    assert f"| `precision` | string | `{config.TOP_DEFAULTS['precision']}` |" in page
    loaded = config.load_config(
        {
            "models": [{"name": "m", "class_path": "Padim", "trainer": {"max_epochs": 1}}],
            "datasets": [{"name": "d", "class_path": "MVTecAD", "categories": ["bottle"]}],
        }
    )
    assert loaded.timing == config.TIMING_DEFAULTS
    assert (loaded.seeds, loaded.precision, loaded.offline) == (
        config.TOP_DEFAULTS["seeds"],
        config.TOP_DEFAULTS["precision"],
        config.TOP_DEFAULTS["offline"],
    )


def test_a_new_key_without_a_description_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a key to the parser but not to the descriptions makes ``--check`` (and the tests) fail."""
    page = tmp_path / "page.md"
    assert schema_docs.main(["--output", str(page)]) == 0
    assert schema_docs.main(["--output", str(page), "--check"]) == 0
    top, *rest = schema_docs.SECTIONS
    monkeypatch.setattr(schema_docs, "SECTIONS", [dataclasses.replace(top, allowed={*top.allowed, "new_key"}), *rest])
    assert any("new_key" in line for line in schema_docs.missing_descriptions())
    assert schema_docs.main(["--output", str(page), "--check"]) == 1


def test_a_stale_page_fails_the_check(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(schema_docs.render().replace("| `seeds` |", "| `seed` |"))
    assert schema_docs.main(["--output", str(page), "--check"]) == 1
