"""Collects README.md and docs/*.md: every code block in them runs (tests/doc_blocks.py)."""

from tests.doc_blocks import docs_sybil

pytest_collect_file = docs_sybil().pytest()
